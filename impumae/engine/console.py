"""A quiet console for a search: the project's own lines on the console, Ray's internals in a file.

While :func:`ray_to_file` is active in the driver:

* what Ray workers and actors write to **stdout** (our pretraining progress lines, prints in
  trials) still reaches the console, prefixed as Ray prefixes it; what they write to **stderr**
  (Ray's and Train's log records, their tracebacks, Tune's "Checkpoint successfully created"
  lines, warnings of libraries) goes to the log file;
* the driver's ``ray.*`` loggers write everything from INFO up to the log file and only ERROR and
  above to the console (a failed trial, with its traceback, is an ERROR of ``ray.tune``);
* Tune's automatic TensorBoard/CSV/JSON logger callbacks are off (``run_search`` adds the JSON
  one back: ``result.json`` per trial is what resuming, the tests and the benchmarks read).

Errors of the project's own code in the driver are raised as usual, and a failed pretraining or
search raises in the driver with the worker's traceback, so they reach the console in full.
The stdout/stderr split uses Ray's private ``global_worker_stdstream_dispatcher``; if Ray moves
it, worker output stays on the console as before (nothing is lost, it is only louder).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import threading

from impumae.engine import lifetime

# Defaults every entry point of a search gets (a script may still set its own before this import):
# Tune warns that "experiment state snapshotting has been triggered multiple times" whenever a trial
# checkpoints a fold within 5 s of the last: expected here (a checkpoint per fold), nothing to act
# on (read when a Tuner starts). MLflow draws a progress bar for every artifact download (the
# selected model is read back once).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Tune's new output engine prints a "Configuration for experiment" box and "View detailed results
# here" at every Tuner start even at verbose=0 (12 lines per search, 60 unlabelled lines in a nested
# run of 5 outer folds); the old engine at verbose=0 prints nothing (the trial lines are ours).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

LOG_NAME = "ray-internals.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _stream_handlers(logger: logging.Logger):
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def _ray_loggers() -> list[logging.Logger]:
    """``ray`` and every already-created ``ray.*`` logger that has handlers of its own, and Optuna's
    (its INFO "A new study created in memory" line at every search start is no news either)."""
    names = ["ray"] + [n for n in list(logging.Logger.manager.loggerDict) if n.startswith("ray.")]
    out = []
    for name in names:
        logger = logging.getLogger(name)
        if name == "ray" or logger.handlers:
            out.append(logger)
    try:
        import optuna  # noqa: F401, PLC0415 (configures its logger's stderr handler on import)
    except ImportError:
        return out
    return out + [logging.getLogger("optuna")]


class PlainStream:
    """A text stream that drops ANSI colour codes on the way to ``stream``."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(ANSI.sub("", text))

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _route_worker_streams(log_file, stdout_to_file: bool = False):
    """Swap Ray's driver-side printer of worker output for one that sends stderr (and stdout too when
    ``stdout_to_file``) to ``log_file``."""
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    names = [name for name, _ in dispatcher.handlers]
    if "ray_print_logs" not in names:      # log_to_driver=False, or Ray changed: leave it alone
        return lambda: None
    ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
    original = dict(dispatcher.handlers)["ray_print_logs"]

    def route(data) -> None:
        if data.get("is_err") or stdout_to_file:
            ray_worker.print_worker_logs(data, PlainStream(log_file), ignore_prefix)
            log_file.flush()
        elif sys.stdout.isatty():
            ray_worker.print_to_stdstream(data, ignore_prefix=ignore_prefix)
        else:   # Ray colours its "(task pid=...)" prefixes whatever the stream is
            ray_worker.print_worker_logs(data, PlainStream(sys.stdout), ignore_prefix)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", route)

    def restore() -> None:
        dispatcher.remove_handler("ray_print_logs")
        if ray_worker.global_worker.connected:
            dispatcher.add_handler("ray_print_logs", original)
    return restore


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (a labelled stream in nested CV)."""

    def __init__(self, level: int):
        super().__init__()
        self.setLevel(level)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):   # StreamHandler.__init__ sets it; the current sys.stderr is used instead
        pass


class _RayLog:
    def __init__(self, path: str, log_file, file_handler: logging.Handler, console_level: int,
                 workers_stdout_to_file: bool = False):
        self.path = path
        self.log_file = log_file
        self.file_handler = file_handler
        self.console_handler = _CurrentStderr(console_level)
        self.workers_stdout_to_file = workers_stdout_to_file
        self._restore = None

    def attach_ray_logger(self) -> None:
        """The file (and the console from ``console_level`` up) on the ``ray`` logger. Again after
        ``ray.init``: with ``configure_logging=False`` it clears that logger's handlers, ours included, and
        Ray's and Tune's warnings then reached the console through logging's last resort (issue #24: "The
        `process_trial_result` operation took 0.518 s, which may be a performance bottleneck", 4 lines
        at a time on a loaded machine)."""
        ray_logger = logging.getLogger("ray")
        if self.file_handler not in ray_logger.handlers:
            ray_logger.addHandler(self.file_handler)
        if not [h for h in _stream_handlers(ray_logger) if h is not self.file_handler]:
            ray_logger.addHandler(self.console_handler)

    def detach_ray_logger(self) -> None:
        for handler in (self.file_handler, self.console_handler):
            logging.getLogger("ray").removeHandler(handler)

    def capture_workers(self) -> None:
        """Route worker stderr to the file (call again after ``ray.init``; idempotent)."""
        self.attach_ray_logger()
        if self._restore is None:
            try:
                self._restore = _route_worker_streams(self.log_file, self.workers_stdout_to_file)
            except (ImportError, AttributeError, KeyError):
                self._restore = lambda: None

    def release_workers(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None


@contextlib.contextmanager
def ray_to_file(log_path: str, console_level: int = logging.ERROR, workers_stdout_to_file: bool = False):
    """Send Ray's and Tune's internals to ``log_path`` while the block runs (see the module doc).

    Yields an object with ``path`` and ``capture_workers()``: worker output is routed at entry when
    Ray is already connected, else from the ``capture_workers()`` call made after ``ray.init``.
    ``workers_stdout_to_file``: the workers' stdout goes to the file too (nested CV: a worker's line
    cannot carry the outer fold it belongs to, so the console has only the driver's labelled lines).
    """
    import ray  # first: importing Ray installs its console handler, which is then found below

    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log_file = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
    file_handler = logging.StreamHandler(log_file)
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    file_handler.setLevel(logging.INFO)
    saved_levels, patched = {}, []
    env_before = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    handle = _RayLog(log_path, log_file, file_handler, console_level, workers_stdout_to_file)
    try:
        for logger in _ray_loggers():
            for handler in _stream_handlers(logger):
                saved_levels.setdefault(handler, handler.level)  # one handler may serve several loggers
                handler.setLevel(max(handler.level, console_level))
            if logger.name in ("ray", "optuna") or not logger.propagate:
                logger.addHandler(file_handler)
                patched.append(logger)
        if ray.is_initialized():
            handle.capture_workers()
        yield handle
    finally:
        handle.release_workers()
        handle.detach_ray_logger()
        for logger in patched:
            logger.removeHandler(file_handler)
        for handler, level in saved_levels.items():
            handler.setLevel(level)
        if env_before is None:
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = env_before
        log_file.close()


# ----------------------------------------------------------------------------- labelled threads
_thread_label = threading.local()


class LabelledStream:
    """A text stream that starts every line a labelled thread writes with its label (see
    :func:`label_thread`); other threads' text passes as it is. Lines are assembled per thread
    (``print`` writes the text and the newline in two calls, and threads interleave), so a thread's
    partial line is held until its newline or the end of its label. A line that already starts with
    the label (the search's own ``echo`` labels its lines) is left alone."""

    def __init__(self, stream):
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        label = getattr(_thread_label, "label", None)
        if label is None:
            return self.stream.write(text)
        held = _thread_label.pending     # {id(stream): the thread's partial line}
        *lines, held[id(self)] = (held.get(id(self), "") + text).split("\n")
        if lines:
            with self._lock:
                self.stream.write("".join(f"{self._labelled(label, line)}\n" for line in lines))
        return len(text)

    @staticmethod
    def _labelled(label: str, line: str) -> str:
        return line if line.startswith(label) or not line.strip() else f"{label} {line}"

    def flush_thread(self) -> None:
        """Write the calling thread's partial line, labelled (the end of its label)."""
        label = getattr(_thread_label, "label", None)
        pending = _thread_label.pending.pop(id(self), "") if label is not None else ""
        if pending and label is not None:
            with self._lock:
                self.stream.write(self._labelled(label, pending) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def labelled_console():
    """``sys.stdout`` and ``sys.stderr`` as :class:`LabelledStream` while the block runs, so that what a
    labelled thread prints (Tune, Optuna, MLflow, warnings) carries its label. Handlers that kept a
    reference to the original stream when they were made (Ray's console handler, at ERROR while
    :func:`ray_to_file` runs) write past it."""
    before = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = LabelledStream(sys.stdout), LabelledStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before


@contextlib.contextmanager
def label_thread(label: str):
    """Label what this thread writes to a :class:`LabelledStream` (nested CV: ``[r0-outer1]``)."""
    _thread_label.label, _thread_label.pending = label, {}
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, LabelledStream):
                stream.flush_thread()
        _thread_label.label = None


def log_path_for(search_dir: str) -> str:
    """A local path for the log: in the search's directory when that is local, else under the cwd."""
    if "://" in search_dir and not search_dir.startswith("file://"):
        return os.path.abspath(os.path.join("ray-logs", search_dir.rstrip("/").rsplit("/", 1)[-1], LOG_NAME))
    local = search_dir[len("file://"):] if search_dir.startswith("file://") else search_dir
    return os.path.join(local, LOG_NAME)


# ----------------------------------------------------------------------------- worker setup hooks
# Here, in a module that imports nothing heavy, because every Ray worker imports the module of its
# setup hook before it runs anything: from impumae.engine.search (Tune, Optuna, MLflow, the export)
# that cost ~4 s per worker start (experiments/bench, docs/benchmarks.md).
# Ray modules whose loggers drown the live progress table in lines nobody acts on, and the least
# level kept. These are private modules: one that moves or loses its logger is skipped.
RAY_CHATTER = {
    # Train V2 logs every ray.train.report at INFO ("Reporting training result 12: TrainingReport(...)")
    # on a logger named after the file, so the trainer's LoggingConfig (``ray.train``) misses it
    "ray.train.v2._internal.execution.context": logging.WARNING,
    # Train V2's placement-group cleaner asks the state API, which needs the dashboard (ray[default]),
    # every few seconds and warns each time it cannot; the trainer still removes its placement group
    # when it ends normally.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}


class _AtLeast(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def quiet_ray_chatter() -> None:
    """Ray worker setup hook: drop the records below the levels of :data:`RAY_CHATTER`.

    A filter, not a level: Train reconfigures logging in its workers with ``dictConfig``, which
    resets the levels of existing ``ray.train`` loggers but keeps their filters.
    """
    for module_name, level in RAY_CHATTER.items():
        try:
            logger = importlib.import_module(module_name).logger
        except (ImportError, AttributeError):
            continue
        if isinstance(logger, logging.Logger):
            logger.addFilter(_AtLeast(level))


def local_worker_setup() -> None:
    """Setup hook of the workers of a Ray this process started: quiet, and killed with the raylet."""
    quiet_ray_chatter()
    lifetime.die_with_raylet()


# ---------------------------------------------------------------------------------------------
# one line per trial result (instead of Tune's result boxes)
# ---------------------------------------------------------------------------------------------
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain(text: str, stream=None) -> str:
    """``text`` without ANSI colour codes unless ``stream`` (default stdout) is a terminal."""
    stream = stream or sys.stdout
    return text if getattr(stream, "isatty", lambda: False)() else ANSI.sub("", text)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _shown_config(config: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in sorted(config.items()) if not str(k).startswith("_"))


def trial_line(trial_id: str, config: dict, result: dict, n_folds: int) -> str:
    """One console line per reported result of a trial: its configuration, folds done, the fixed epoch
    of its mean validation curve so far and the mean validation CS-score at that epoch."""
    cs = result.get("mean_val_cs_score", float("nan"))
    return (f"trial {trial_id} fold {result.get('folds_done', '?')}/{n_folds}: fixed epoch "
            f"{result.get('fixed_epoch', '?')}, mean CS {cs:.3f}  [{_shown_config(config)}]")


def stop_line(trial_id: str, result: dict, n_folds: int, status: str, config: dict | None = None) -> str:
    """How a trial ended: all folds, stopped by ASHA (early stopping: its running mean CS-score was below
    the rung's cut-off after that many folds), or an error; with its configuration when ``config`` is given
    (the only line of a trial when the per-fold lines are off)."""
    done = result.get("folds_done", 0)
    cs = result.get("mean_val_cs_score", float("nan"))
    shown = f"  [{_shown_config(config)}]" if config is not None else ""
    if status == "ERROR":
        return f"trial {trial_id} failed after {done}/{n_folds} folds (the error is in the Ray log){shown}"
    if done >= n_folds:
        return (f"trial {trial_id} complete: {n_folds} folds, mean CS {cs:.3f} at fixed epoch "
                f"{result.get('fixed_epoch', '?')}{shown}")
    return (f"trial {trial_id} stopped by ASHA after {done}/{n_folds} folds: its mean CS {cs:.3f} was below the "
            f"cut-off of the trials that reached that many folds (not a candidate for selection){shown}")


def trial_lines(echo, n_folds: int, per_fold: bool = True):
    """A Tune callback printing through ``echo`` (Tune's own console output is off: ``verbose=0``)
    :func:`trial_line` per result (``per_fold``) and :func:`stop_line` per finished trial; without
    ``per_fold`` (nested CV: K outer folds x trials x folds lines would bury the rest) the stop line alone,
    with the configuration. Built on call: this module is imported by every Ray worker and must not
    import Tune."""
    from ray.tune import Callback  # noqa: PLC0415

    class TrialLines(Callback):
        def __init__(self, echo, n_folds: int, per_fold: bool):   # arguments, not a closure: pickled by value
            self.echo, self.n_folds, self.per_fold = echo, n_folds, per_fold

        def __getstate__(self):    # Tune pickles its callbacks with the experiment state; echo may be a closure
            return {"n_folds": self.n_folds, "per_fold": self.per_fold}

        def __setstate__(self, state):
            self.echo, self.n_folds, self.per_fold = print, state["n_folds"], state.get("per_fold", True)

        def _config(self, trial):
            return None if self.per_fold else trial.config

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.per_fold:
                self.echo(trial_line(trial.trial_id, trial.config, result, self.n_folds))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.echo(stop_line(trial.trial_id, trial.last_result or {}, self.n_folds, "TERMINATED", self._config(trial)))

        def on_trial_error(self, iteration, trials, trial, **info):
            self.echo(stop_line(trial.trial_id, trial.last_result or {}, self.n_folds, "ERROR", self._config(trial)))

    return TrialLines(echo, n_folds, per_fold)
