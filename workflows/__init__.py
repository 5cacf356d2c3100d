"""AiiDA workchains of the active-learning loop.

Importing them makes a failed commit roll aiida-core's session back (see
:mod:`tace_aiida.sqlite_storage`), so that a daemon worker running them is never wedged by one.
"""

from tace_aiida.sqlite_storage import install_session_recovery

install_session_recovery()
