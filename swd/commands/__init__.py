"""The command layer: one module per `swd` command group, each with `register(subparsers)`.

Handlers are thin: they check the arguments (one-line `SwdError`s), call library functions and
print. Heavy imports (diffusers, the models) happen inside the handlers, so `swd --help` is quick.
This layer sits on top: nothing below imports it.
"""

from swd.commands import app, bench, data, evaluation, report, sample, schedules, train

# In the order `swd --help` lists them.
COMMAND_GROUPS = (schedules, bench, data, train, sample, evaluation, report, app)
