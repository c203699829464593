"""jobd: a job queue daemon that runs jobs from a MySQL/MariaDB table."""

__version__ = "0.1.0"
