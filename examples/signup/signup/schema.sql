-- The app's own tables, beside the outbox and ledgers that `conveyor migrate up` creates:
-- its business table (signup.users) and the mailer group's effects table (mailer.mail).
-- Every statement is idempotent, so `python -m signup migrate` may run any number of times.
CREATE SCHEMA IF NOT EXISTS signup;
CREATE TABLE IF NOT EXISTS signup.users (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE,
    signed_up_at timestamptz NOT NULL DEFAULT now(),
    verified_at timestamptz
);
CREATE SCHEMA IF NOT EXISTS mailer;
CREATE TABLE IF NOT EXISTS mailer.mail (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id uuid NOT NULL,
    address text NOT NULL,
    kind text NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now()
);
