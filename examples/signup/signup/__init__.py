"""An example service built on Conveyor: sign-ups publish events, a mailer group handles them.

`python -m signup --help` lists its commands; the repository README's Quick start walks them.
"""
