"""The names jobd checks everywhere: targets, slots, workers and tables.

A leaf module: the protocol, the config and jobctl all take their patterns from here,
so a name one of them accepts is a name every other one accepts.
"""

import re

#: Target and slot names: they are stored in char(16) columns and appear in logs.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,16}")
#: Worker names: host names fit, and so does the `worker` column (varchar(64)).
WORKER_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Table names: they are quoted into SQL, so only these characters are allowed.
TABLE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The slot of a row whose `slot` column is NULL, and of a target given as `name: N`.
DEFAULT_SLOT = "default"
