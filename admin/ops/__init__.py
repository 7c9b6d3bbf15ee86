"""The ops plane of a running process: gRPC server, health, AdminService, auth, status."""
