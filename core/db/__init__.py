"""Database: SQLAlchemy 2.0 models, sessions, repositories and the job state machine."""
