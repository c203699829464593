"""jobd: a job queue daemon that runs jobs from a MySQL/MariaDB table."""

__version__ = "0.2.0"
