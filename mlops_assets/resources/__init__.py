"""One typed Dagster resource per external tool."""
