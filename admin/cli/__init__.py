"""The `conveyor` command line: commands, the AdminService client, output."""
