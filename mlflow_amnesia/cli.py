"""The ``mlflow-amnesia`` command line.

Every command talks to the tracking server in ``MLFLOW_TRACKING_URI`` (default
``sqlite:///mlflow.db`` in the current directory); only ``train`` creates a missing local
database. Errors print one line naming the input and what to do, and exit with status 1 (2 for
usage errors, 130 for Ctrl-C). Options are checked while they are parsed, before anything
is created.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from .errors import AmnesiaError
from .jobs import validation
from .recording.store.codecs import CODECS
from .unlearn import METHODS, REPAIRS


def _friendly(fn=None, *, creates_store: bool = False):
    """Turn AmnesiaError (and an unreachable tracking server) into a one-line error, exit 1.

    First the tracking store is checked (an unknown URI scheme, a missing, wedged or foreign
    sqlite file are errors before MLflow touches anything); only a command with
    ``creates_store`` (``train``) creates a missing local sqlite database, whole.
    """
    if fn is None:
        return functools.partial(_friendly, creates_store=creates_store)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from .mlflow.tracking import bound_retries, check_reachable, check_tracking_store

            check_tracking_store(create=creates_store)
            check_reachable()  # seconds, not MLflow's ~4 minutes of retries, when the server is down
            with bound_retries():  # a server that goes away mid-command: ~30 s, not ~4 minutes a request
                return fn(*args, **kwargs)
        except AmnesiaError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo(
                "interrupted: a version is registered only as the last step, complete; "
                "`mlflow-amnesia lineage` shows what exists, and re-running is safe",
                err=True,
            )
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - classify only tracking-server failures
            from .mlflow.tracking import is_unreachable

            if is_unreachable(e):
                import mlflow

                raise click.ClickException(
                    f"cannot reach the tracking server at {mlflow.get_tracking_uri()}: it stopped answering during "
                    f"the command ({_retries()}). Start it again (or set MLFLOW_TRACKING_URI to one that runs), then "
                    "re-run the same command (re-running is safe: a version is registered only whole)"
                ) from None
            raise

    return wrapper


def _retries() -> str:
    from .mlflow.tracking import RETRIES_ENV

    n = os.environ.get(RETRIES_ENV, "")
    return f"no answer after {n} retries" if n.isdigit() else "no answer"


def _checked(check, *args):
    """A click callback running ``check(value, flag, *args)`` from :mod:`mlflow_amnesia.jobs.validation`:
    a bad value stops the command while its options are parsed, before anything is created."""

    def callback(ctx, param, value):
        if value is None:  # not given, no default: nothing to check
            return None
        try:
            return check(value, param.opts[0], *args)
        except AmnesiaError as e:
            raise click.ClickException(str(e)) from None

    return callback


class _Named(click.Choice):
    """One of a registry's names (:mod:`mlflow_amnesia.names`), listed in ``--help``.

    A value the registry does not know stops the command while its options are parsed, with the
    registry's one-line message and exit status 1, like every other bad option value here.
    """

    def __init__(self, names, check) -> None:
        super().__init__(list(names), case_sensitive=False)
        self._check = check

    def convert(self, value, param, ctx):
        try:
            return self._check(value, param.opts[0] if param is not None else "")
        except AmnesiaError as e:
            raise click.ClickException(str(e)) from None


def _method_named(value, flag):
    METHODS.get(value)  # unknown: InputError naming the methods
    return value


_MODEL_HELP = "Registered model: its name (as `train` registered it), models:/NAME/N or models:/NAME@ALIAS."


def _reference(model_name, version=None, alias=None):
    """``--model`` (a name or a models:/ URI) merged with ``--version``/``--alias``; one line if wrong."""
    try:
        return validation.merge_reference(validation.model_reference(model_name), version, alias)
    except AmnesiaError as e:
        raise click.ClickException(str(e)) from None


def _version_options(command):
    @functools.wraps(command)
    def with_reference(*args, model_name, version, alias, **kwargs):
        ref = _reference(model_name, version, alias)
        return command(*args, model_name=ref.name, version=ref.version, alias=ref.alias, **kwargs)

    fn = click.option("--alias", default=None, help="Use the version this alias points to (e.g. production).")(
        with_reference
    )
    fn = click.option("--version", "version", type=int, default=None, help="Model version (default: the latest).")(fn)
    return click.option("--model", "model_name", required=True, help=_MODEL_HELP)(fn)


def _audit_options(fn):
    fn = click.option(
        "--inversion",
        type=click.Choice(["auto", "on", "off"]),
        default="auto",
        show_default=True,
        help="Model inversion: auto inverts a forget's classes (under the version and its parent); "
        "on also inverts a version that forgot nothing (its first 10 classes); off never.",
    )(fn)
    fn = click.option(
        "--inversion-iterations",
        default=None,
        metavar="N",
        callback=_optional_positive,
        help="Model-inversion gradient steps per class, a PROCESS denoising step every half (default, or "
        "empty: fitted to the image size, 100 for digits' 8x8 up to 1000 for 28x28 and larger).",
    )(fn)
    fn = click.option(
        "--shadows",
        default=None,
        metavar="N",
        callback=_optional_count,
        help="Shadow models for membership inference, >= 2 (default, or empty: 4 on digits, 16 "
        "otherwise; trained once, then cached).",
    )(fn)
    return fn


def _optional_int(value, minimum: int, why: str):
    """An integer >= ``minimum``, or None for an absent or empty value (MLproject passes "" for 'default')."""
    if value is None or str(value).strip() == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer") from None
    if n < minimum:
        raise click.BadParameter(f"{n} is below {minimum}{why}")
    return n


def _optional_positive(ctx, param, value):
    return _optional_int(value, 1, "")


def _optional_count(ctx, param, value):
    return _optional_int(value, 2, ": membership inference needs shadows that saw and did not see each record")


def _settings(shadows, inversion_iterations, inversion="auto"):
    from .audit.privacy import AuditSettings

    return AuditSettings(shadows=shadows, inversion_iterations=inversion_iterations, inversion=inversion)


class _Main(click.Group):
    """The ``mlflow-amnesia`` group: Ctrl-C before a command's own handling is one line, exit 130."""

    def main(self, *args, **kwargs):
        from .interrupts import end_startup

        end_startup()  # from here on Ctrl-C is a KeyboardInterrupt, which the commands handle
        return super().main(*args, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # in the group callback or while parsing a command's options
            from .interrupts import STARTUP_MESSAGE

            click.echo(STARTUP_MESSAGE, err=True)
            sys.exit(130)


def _no_program_version_flag(ctx, param, value):
    if value:
        raise click.UsageError(
            "--version names a model version, an option of the commands (e.g. `mlflow-amnesia forget --model "
            "NAME --version 2`); the program's own version is `mlflow-amnesia -V` (--program-version)",
            ctx=ctx,
        )


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    None,
    "-V",
    "--program-version",
    package_name="mlflow-amnesia",
    prog_name="mlflow-amnesia",
    message="%(prog)s %(version)s",
)
@click.option("--version", is_flag=True, hidden=True, expose_value=False, callback=_no_program_version_flag)
def main() -> None:
    """Amnesiac machine learning for MLflow: train with every step recorded, forget records on
    request (a new registered model version), and audit every version.

    \b
    Quick start (tracking store: $MLFLOW_TRACKING_URI, default sqlite:///mlflow.db):
      mlflow-amnesia train                         # digits, resnet18 -> version 1
      mlflow-amnesia records --model digits-resnet --limit 3 > ids.txt
      mlflow-amnesia forget --model digits-resnet --records ids.txt --repair finetune --yes
      mlflow-amnesia lineage --model digits-resnet

    \b
    The record key: record ids are stored only as keyed hashes. The key is
    $MLFLOW_AMNESIA_KEY (64 hex digits, e.g. from a team's secret store), else
    the file ~/.config/mlflow-amnesia/key that the first `train` creates (it
    says so once): back it up. Without it no record can be forgotten from the
    models trained with it.

    \b
    --version N on a command is a model version; the program's version: -V.
    """
    import os

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        mlflow.set_tracking_uri("sqlite:///mlflow.db")


@main.command()
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    help="digits (offline, scikit-learn's bundled set), mnist, cifar100 (downloaded by torchvision), or idx:<dir> (MNIST-format files).",
)
@click.option(
    "--arch",
    default="resnet18",
    show_default=True,
    help="resnet18 (3x3 CIFAR stem up to 64 px), cnn (small, fast), mlp (one hidden layer of 64), or your builder 'package.module:function'.",
)
@click.option(
    "--epochs", default=4, show_default=True, type=click.IntRange(min=1), help="Passes over the training set."
)
@click.option(
    "--batch-size",
    default=128,
    show_default=True,
    type=click.IntRange(min=1),
    help="Records per optimizer step (smaller: fewer records per step, so a forget rolls back less of the model).",
)
@click.option(
    "--lr",
    default=0.02,
    show_default=True,
    type=float,
    callback=_checked(validation.positive_number),
    help="SGD learning rate.",
)
@click.option(
    "--momentum",
    default=0.9,
    show_default=True,
    type=float,
    callback=_checked(validation.non_negative_number, "momentum"),
    help="SGD momentum.",
)
@click.option(
    "--weight-decay",
    default=5e-4,
    show_default=True,
    type=float,
    callback=_checked(validation.non_negative_number, "weight decay"),
    help="SGD weight decay (L2).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of the split, the initial weights and (with the record key) the batch order.",
)
@click.option(
    "--codec",
    default=None,
    type=_Named(CODECS.names(), validation.known_codec),
    help="Delta codec: int8 (default), bf16, f32 (lossless), zstd (lossless, unshuffled: a baseline).",
)
@click.option(
    "--store-uri",
    default=None,
    callback=_checked(validation.writable_store_uri),
    help="fsspec URL under which to keep the delta store (default: inside the run's artifacts).",
)
@click.option(
    "--model-name",
    default=None,
    callback=_checked(validation.registered_model_name),
    help="Registered model name (default: <dataset>-<arch>, e.g. digits-resnet).",
)
@click.option("--data-root", default=None, help="Where mnist/cifar100 are (or are downloaded to).")
@click.option(
    "--holdout-fraction",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Share of records held out (data sets without a predefined test split).",
)
@click.option(
    "--audit/--no-audit",
    default=True,
    show_default=True,
    help="Run the privacy audit (membership inference, inversion) on the new version.",
)
@_audit_options
@_friendly(creates_store=True)
def train(
    dataset,
    arch,
    epochs,
    batch_size,
    lr,
    momentum,
    weight_decay,
    seed,
    codec,
    store_uri,
    model_name,
    data_root,
    holdout_fraction,
    audit,
    shadows,
    inversion_iterations,
    inversion,
):
    """Train a model with every optimizer step recorded; register it as a new model version."""
    from .jobs.train import train as run_train

    r = run_train(
        dataset=dataset,
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        seed=seed,
        codec=codec or None,
        store_uri=store_uri or None,
        model_name=model_name or None,
        data_root=data_root,
        holdout_fraction=holdout_fraction,
        audit=audit,
        audit_settings=_settings(shadows, inversion_iterations, inversion),
    )
    click.echo(
        f"{r.model_name} v{r.version}: acc.test {r.metrics.get('acc.test', float('nan')):.4f}, {r.steps} steps recorded (run {r.run_id})"
    )
    _echo_verdict(r.model_name, r.version)


@main.command()
@_version_options
@click.option(
    "--records",
    "records_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Text file, one record id per line (# comments and blank lines ignored).",
)
@click.option("--class", "cls", default=None, help="Forget every training record of this class (index or name).")
@click.option(
    "--method",
    default="amnesiac",
    show_default=True,
    type=_Named(METHODS.names(), _method_named),
    help="Unlearning method: amnesiac (roll back the steps that saw the records), relabel (train on "
    "the records with wrong labels), finetune (continue training without them), retrain (from the "
    "initial weights without them: the reference).",
)
@click.option(
    "--epochs",
    "method_epochs",
    default=None,
    type=click.IntRange(min=1),
    help="Training epochs of relabel / finetune (default 1) and retrain (default: as trained).",
)
@click.option(
    "--copies",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="relabel: copies of each forgotten record inserted with random wrong labels.",
)
@click.option(
    "--repair",
    type=click.Choice(list(REPAIRS.names())),
    default="none",
    show_default=True,
    help="After amnesiac rollback: finetune on the retained records, or replay the rolled-back steps "
    "without the forgotten records.",
)
@click.option(
    "--repair-epochs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Epochs of the --repair finetune over the retained records (ignored with --repair none or replay).",
)
@click.option(
    "--repair-lr",
    default=None,
    type=float,
    callback=_checked(validation.positive_number, "repair learning rate"),
    help="Learning rate of the repair (default: the training lr).",
)
@click.option(
    "--max-step-share",
    default=0.01,
    show_default=True,
    type=float,
    help="Warn and ask (refuse without --yes) above this share of rolled-back steps.",
)
@click.option("--dry-run", is_flag=True, help="Report the affected steps and what would be registered; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Proceed without asking, also above --max-step-share.")
@click.option(
    "--set-alias",
    default=None,
    callback=_checked(validation.alias_name),
    help="Move this alias (e.g. production) to the new version.",
)
@click.option(
    "--purge",
    "purge_parent",
    is_flag=True,
    help="After registering, purge the version just superseded (GDPR erasure of its weights and of the "
    "deltas of the steps that saw the records; see `mlflow-amnesia purge --help`).",
)
@click.option(
    "--store-uri",
    default=None,
    callback=_checked(validation.writable_store_uri),
    help="fsspec URL for deltas recorded by a repair (default: as at training).",
)
@click.option("--data-root", default=None, help="Where the training data set is, if not where training found it.")
@click.option(
    "--received",
    default=None,
    callback=_checked(validation.received_date),
    help="The day the deletion request was received, YYYY-MM-DD (default: today); the erasure ledger "
    "counts the one-month deadline from it (`mlflow-amnesia requests`).",
)
@click.option(
    "--audit/--no-audit",
    default=True,
    show_default=True,
    help="Run the privacy audit (membership inference, inversion) on the new version. Without it only "
    "accuracy is measured, on the held-out and forgotten records (the parent's on the forgotten ones); "
    "acc.retain is left to `mlflow-amnesia audit` (--accuracy-only for accuracy alone).",
)
@_audit_options
@_friendly
def forget(
    model_name,
    version,
    alias,
    records_file,
    cls,
    method,
    method_epochs,
    copies,
    repair,
    repair_epochs,
    repair_lr,
    max_step_share,
    dry_run,
    yes,
    set_alias,
    store_uri,
    data_root,
    audit,
    shadows,
    inversion_iterations,
    inversion,
    purge_parent,
    received,
):
    """Forget records: register version n+1 without their contribution, with lineage tags.

    The request (its records' keyed hashes, the day --received) is entered in the model's erasure
    ledger first: later trainings of the model or its data set leave the records out, and
    `mlflow-amnesia requests` follows it to the end.

    Re-running a forget that was stopped after registering its version completes that version
    (description, --set-alias, the parent's superseded tag, --purge) and registers nothing new."""
    from .jobs.forget import check_step_share
    from .jobs.forget import forget as run_forget

    max_step_share = check_step_share(max_step_share)  # before any registry call: one line, exit 1
    confirm = (lambda q: click.confirm(q, default=False, err=True)) if sys.stdin.isatty() else None
    r = run_forget(
        model_name,
        records_file=records_file,
        cls=cls,
        version=version,
        alias=alias,
        method=method,
        repair=repair,
        repair_epochs=repair_epochs,
        repair_lr=repair_lr,
        method_epochs=method_epochs,
        copies=copies,
        dry_run=dry_run,
        yes=yes,
        max_step_share=max_step_share,
        set_alias=set_alias,
        store_uri=store_uri,
        data_root=data_root,
        confirm=confirm,
        audit=audit,
        audit_settings=_settings(shadows, inversion_iterations, inversion),
        purge=purge_parent,
        received=received,
    )
    done = r.plan.completes
    if r.version is None and done is not None:
        click.echo(
            f"dry run: {model_name} v{done} was registered by this request earlier and not finished; "
            f"would complete: {', '.join(r.completed)}"
        )
    elif r.version is None:
        click.echo(
            f"dry run: {r.plan.describe()}"
            + (f"; --purge would then purge v{r.plan.parent_version}" if purge_parent else "")
        )
    elif done is not None:
        click.echo(
            f"{model_name} v{r.version} (parent v{r.plan.parent_version}, {r.plan.method}): completed the earlier "
            f"registration of v{r.version} by this request, stopped before it finished: {', '.join(r.completed)}"
        )
        _echo_verdict(model_name, r.version)
    else:
        m = r.metrics
        click.echo(
            f"{model_name} v{r.version} (parent v{r.plan.parent_version}, {method}): "
            f"rolled back {int(m.get('steps.rolled_back', 0))} of {r.plan.total_steps} steps; "
            f"acc.test {m.get('acc.test', float('nan')):.4f}, acc.forget {m.get('acc.forget', float('nan')):.4f}"
        )
        _echo_verdict(model_name, r.version)
    if r.purge is not None:
        click.echo(r.purge.summary())
    if r.version is not None:
        _note_aliases_left(model_name, r.plan.parent_version, r.version)


def _note_aliases_left(name, parent, version):
    """Say which aliases still point at the superseded parent: what serves them still holds the records."""
    from .mlflow import registry

    aliases = dict(getattr(registry.client().get_registered_model(name), "aliases", {}) or {})
    left = sorted(a for a, v in aliases.items() if str(v) == str(parent))
    if left:
        click.echo(
            f"note: alias(es) {', '.join(left)} still point at v{parent}, which v{version} superseded and which still "
            f"holds the forgotten records: point them at v{version} (the MLflow UI, or "
            f"MlflowClient().set_registered_model_alias; `forget --set-alias ALIAS` does it as it forgets), "
            f"then purge v{parent}",
            err=True,
        )


_PURGE_HELP = """Erase superseded versions for good (GDPR): what a forget left behind.

    A forget registers a new version; the one it superseded still holds the forgotten records'
    contribution, in its weights and in the recorded deltas of the steps that saw them. This
    deletes, for each --version (a version a forget has superseded):

    \b
    ERASED
      - the version's weights (data/weights.pt) and input examples: every model
        artifact except the lineage metadata listed under KEPT;
      - its source run's audit/ artifacts (the model-inversion grid of those weights);
      - the recorded deltas (chunk files) of every step, in the stores of its lineage,
        whose batch held a record the superseding forget removed;
      - the final optimizer state (momentum buffers) of each phase with such a step.
    \b
    KEPT
      - the version row, its tags and description (tags amnesia.purged and
        amnesia.purge_started, a tombstone note), so `lineage` still shows it;
      - data/amnesia.json, arch.json, segment manifests and record indexes (keyed
        hashes, never ids), rolled_back.npy, forgotten.npy, MLmodel and env files;
      - run params and metrics; each phase's initial weights and batch order
        (random init and the keyed order, sealed under the record key);
      - the records' indirect influence on later steps (their deltas were computed
        at weights the records had moved: amnesiac unlearning's known limit);
      - outside the registry: the data set itself, cached audit shadow models
        (experiment mlflow-amnesia-shadows), and any copy made by hand.

    It refuses, deleting nothing, when a version is not superseded (the current one), carries
    an alias, or a version that stays still needs one of those steps (a relabel or finetune
    forget keeps them; an unpurged ancestor still holds the records: purge it in the same call).
    Loading a purged version raises an error saying so. A purge that was killed re-runs to
    completion; re-running a finished one does nothing.

    --request HASH (instead of --version) erases every place of one deletion request of the
    erasure ledger (`mlflow-amnesia requests` lists them): each superseded version of every root
    that still holds its records; of every train or forget run of the model that registered
    nothing (killed or failed), its recorded delta store and training files and its logged model;
    and the audit's cached shadow runs that trained on the records (later audits then leave them
    out of the pool). It refuses, deleting nothing, while a version that never forgot the records
    (forget them from it first) or a train still running holds them.
    """


@main.command(
    help=_PURGE_HELP, short_help="Erase superseded versions for good (GDPR): weights and the records' deltas."
)
@click.option("--model", "model_name", required=True, help=_MODEL_HELP + " A URI's version is purged.")
@click.option(
    "--version",
    "versions",
    type=int,
    multiple=True,
    help="A superseded version to purge; repeat to purge several at once (e.g. with its ancestors).",
)
@click.option(
    "--request",
    "request",
    default=None,
    help="Erase every place of this deletion request (its hash, or its first 8+ characters, as "
    "`mlflow-amnesia requests` lists it) instead of naming versions.",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted, with byte counts; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking for confirmation.")
def purge(model_name, versions, request, dry_run, yes):
    ref = _reference(model_name)
    versions = list(versions)
    if ref.version is not None and ref.version not in versions:
        versions.append(ref.version)
    by_version = bool(versions) or ref.alias is not None
    if by_version == bool(request):
        raise click.ClickException(
            "purge needs either --version N (repeat it for several versions; or --model models:/NAME/N) or "
            "--request HASH (every place of one deletion request), not both"
            if request
            else "nothing to purge: give --version N (repeat it to purge several versions at once; or --model "
            "models:/NAME/N) or --request HASH"
        )
    _purge(ref, versions, request, dry_run, yes)


@_friendly
def _purge(ref, versions, request, dry_run, yes):
    from .jobs.purge import purge as run_purge

    model_name = ref.name
    if ref.alias is not None:
        from .mlflow import registry

        versions.append(int(registry.resolve_version(model_name, alias=ref.alias).version))

    confirm = (lambda q: click.confirm(q, default=False, err=True)) if sys.stdin.isatty() else None
    try:
        if request:
            from .jobs.requests import purge_request

            rp = purge_request(model_name, request, dry_run=dry_run, yes=yes, confirm=confirm)
            if dry_run:
                text = rp.describe()
                click.echo(f"dry run: would delete:\n{text}" if text else "dry run: nothing left for a purge to delete")
            else:
                for line in rp.lines:
                    click.echo(line)
            return
        r = run_purge(model_name, versions, dry_run=dry_run, yes=yes, confirm=confirm)
    except KeyboardInterrupt:
        click.echo("interrupted: the purge is not finished; run the same command again to finish it", err=True)
        sys.exit(130)
    click.echo(r.summary())


_REQUESTS_HELP = """List every deletion request of a model's erasure ledger, and where its records still are.

    Each request (its keyed hash, the number of records, the day received: `forget --received`)
    with its status in every place that may hold its records' contribution:

    \b
      every version of every root of the model:
        forgotten    a forget removed them (or `train` left them out)
        still holds  its weights, or the recorded deltas of the steps that saw them
        purged       superseded, and its weights and those deltas are deleted
        never held   none of the records is in its record index
      every train run of the model that registered no version (killed, failed):
        still holds  its whole delta store and training files, and its logged model if it
                     logged one (in progress while it runs)
      every forget run that registered no version and left a recorded phase (relabel,
      finetune) or a logged model:
        still holds  that phase or model: it started from the parent's weights
      the shadow pool (the audit's cached shadow models of the data set, sets and members):
        still holds  a cached shadow run whose pool trained on them
        purged       `purge --request` deleted those runs; later audits leave the records out
        never held   no cached shadow model of the data set trained on them

    A request is finished once no place holds its records. The deadline is one calendar month
    after it was received (GDPR art. 12(3), 17); open requests show the days left, overdue ones
    are flagged. With --check the command exits 1 when a request is overdue (for a cron job or
    CI). `mlflow-amnesia purge --request HASH` erases what a purge can; `mlflow-amnesia report`
    writes the request's erasure report.
    """


@main.command(help=_REQUESTS_HELP, short_help="Deletion requests of a model: where their records still are, deadlines.")
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--request", "request", default=None, help="Only this request (its hash or first 8+ characters).")
@click.option("--check", is_flag=True, help="Exit 1 when any request is overdue (past one month and not finished).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text (one block per request) or json (one object per request).",
)
@_friendly
def requests(model_name, request, check, fmt):
    from .jobs.requests import as_json, render, request_status

    model_name = _reference(model_name).name  # a name or a models:/ URI: the ledger is the model's

    statuses = request_status(model_name, request=request)
    click.echo(json.dumps(as_json(statuses), indent=2) if fmt == "json" else render(statuses, model_name))
    late = [s for s in statuses if s.overdue]
    if check and late:
        raise click.ClickException(
            f"{len(late)} deletion request(s) of {model_name} are overdue (received more than a month ago and still held "
            f"somewhere): {', '.join(s.request.request[:16] for s in late)}; erase them (`mlflow-amnesia purge --request "
            "HASH`, or forget them from the versions that still hold them)"
        )


@main.command()
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--request", "request", required=True, help="The request (its hash or first 8+ characters).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Where to write the page (default: erasure-<model>-<request>.html).",
)
@click.option(
    "--log/--no-log",
    default=True,
    show_default=True,
    help="Also log the page on the request's forget run(s) and link it from their versions' descriptions.",
)
@_friendly
def report(model_name, request, output, log):
    """Write the erasure report of one deletion request: a self-contained HTML page to hand over.

    It shows the request (hash, count, received, finished), every version involved with its
    method and steps rolled back, the audit's verdict and figures with their 95% intervals (as
    logged), the status of every place that may hold the records, and the sha256 of the page's
    content (`python -m mlflow_amnesia.jobs.report --verify FILE` checks it)."""
    from .jobs.report import write_report

    model_name = _reference(model_name).name  # a name or a models:/ URI: the ledger is the model's
    r = write_report(model_name, request, output=output, log=log)
    click.echo(f"wrote {r.path}: the erasure report of request {r.request[:16]} (sha256 {r.sha256})")
    for line in r.logged:
        click.echo(line)


@main.command()
@_version_options
@click.option("--data-root", default=None, help="Where the training data set is, if not where training found it.")
@click.option(
    "--privacy/--accuracy-only",
    default=True,
    show_default=True,
    help="Include membership inference and model inversion (default), or accuracy figures only.",
)
@_audit_options
@click.option(
    "--force",
    is_flag=True,
    default=False,
    help="Compute the audit again even when the version's run already holds one with the same settings.",
)
@_friendly
def audit(model_name, version, alias, data_root, privacy, shadows, inversion_iterations, inversion, force):
    """Audit a version: accuracy (acc.*), membership inference (audit.mia.*, audit.lira.*) on its
    forgotten records (or a sample of training records), model inversion (audit.inversion.score)
    of a forget's classes; logged on the run that produced the version, and its description table
    refreshed. A version already audited with the same settings (by train, forget or an earlier
    audit) shows its logged figures instead, unless --force."""
    from .jobs.audit import LoggedFigures, audit_version

    mv = _resolved(model_name, version, alias)
    m = audit_version(
        model_name,
        version=int(mv.version),
        data_root=data_root,
        privacy=privacy,
        settings=_settings(shadows, inversion_iterations, inversion),
        force=force,
    )
    click.echo(f"audit of {mv.name} v{mv.version} (models:/{mv.name}/{mv.version})")
    if isinstance(m, LoggedFigures):
        click.echo(
            f"already audited with these settings (run {m.run_id}): its logged figures follow; "
            "--force computes them again"
        )
    for k in sorted(m):
        click.echo(f"{k}\t{m[k]:.4f}")
    mv = _resolved(model_name, version, alias)
    _echo_verdict(model_name, int(mv.version))


def _resolved(model_name, version, alias):
    from .mlflow import registry

    return registry.resolve_version(model_name, version=version, alias=alias)


def _echo_verdict(model_name: str, version: int | None) -> None:
    """``audit verdict: OUTCOME: reason``: the version's verdict as its tags hold it."""
    if version is None:
        return
    from .tags import TAG_VERDICT, TAG_VERDICT_REASON

    tags = _resolved(model_name, version, None).tags or {}
    if TAG_VERDICT in tags:
        click.echo(f"audit verdict: {tags[TAG_VERDICT]}: {tags.get(TAG_VERDICT_REASON, '')}")


@main.command()
@_version_options
@click.option(
    "--member",
    "members",
    multiple=True,
    type=click.IntRange(min=0),
    help="Index of the pool member to train (0..N-1); repeat for several. Omit it to list which are finished.",
)
@click.option(
    "--shadows",
    default=None,
    callback=_optional_count,
    help="Members in the pool, >= 2: the count the audit uses (default, or empty: 4 on digits, 16 otherwise).",
)
@click.option("--data-root", default=None, help="Where the training data set is, if not where training found it.")
@_friendly
def shadow(model_name, version, alias, members, shadows, data_root):
    """Train one member of a version's audit shadow pool, so a pool trains in parallel.

    Each member is cached as its own run of the experiment mlflow-amnesia-shadows; the next audit
    uses the finished members and trains only the missing ones. Safe to re-run (a finished member
    is not retrained) and to run in parallel (one process per --member), also as
    `mlflow run . -e shadow -P model_name=NAME -P member=I`. Without --member: which members are
    finished and which are missing."""
    from .jobs.shadow import shadow_member, shadow_status

    if members:
        st = shadow_member(
            model_name, members=list(members), version=version, alias=alias, shadows=shadows, data_root=data_root
        )
    else:
        st = shadow_status(model_name, version=version, alias=alias, shadows=shadows, data_root=data_root)
    click.echo(st.summary())


@main.command()
@click.option(
    "--model",
    "model_name",
    required=True,
    callback=lambda ctx, param, value: _reference(value).name,  # parsed before the tracking store is touched
    help=_MODEL_HELP + " The whole tree is shown.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "png"]),
    default="text",
    show_default=True,
    help="text (a tree), json (one object per version), or png (a picture of the tree).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file instead of stdout (png: default lineage-<model>.png).",
)
@_friendly
def lineage(model_name, fmt, output):
    """Show the version tree: method, records, steps rolled back, accuracy and audit figures."""
    import re

    from .errors import InputError
    from .jobs.lineage import lineage_rows, render_png, render_text

    rows = lineage_rows(model_name)
    if fmt == "png":
        output = output or f"lineage-{re.sub(r'[^A-Za-z0-9._-]+', '-', model_name)}.png"
        data = render_png(model_name, rows)
    else:
        text = json.dumps(rows, indent=2) if fmt == "json" else render_text(model_name, rows)
        if not output:
            click.echo(text)
            return
        data = (text + "\n").encode("utf-8")
    try:
        with open(output, "wb") as f:
            f.write(data)
    except OSError as e:
        raise InputError(f"cannot write the lineage to {output}: {e.strerror} (choose another --output)") from None
    click.echo(f"wrote {output}: the lineage of {model_name} ({len(rows)} version(s))")


@main.command()
@_version_options
@click.option("--class", "cls", default=None, help="Only records of this class (index or name).")
@click.option(
    "--split",
    "part",
    type=click.Choice(["train", "holdout"]),
    default="train",
    show_default=True,
    help="The version's training records, or the held-out ones it never saw.",
)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="At most this many records.")
@click.option("--labels/--no-labels", default=False, help="Print the label beside each id (tab-separated).")
@click.option("--data-root", default=None, help="Where the training data set is, if not where training found it.")
@_friendly
def records(model_name, version, alias, cls, part, limit, labels, data_root):
    """List record ids of a version's training data (rebuilt from its recorded data spec),
    one per line, to write an ids file for `forget`. Already forgotten records are left out, and so
    is every record under a deletion request of the erasure ledger (`mlflow-amnesia requests`)."""
    from .jobs.records import list_records

    for rid, label in list_records(
        model_name, version=version, alias=alias, cls=cls, part=part, limit=limit, data_root=data_root
    ):
        click.echo(f"{rid}\t{label}" if labels else rid)


@main.command()
@_version_options
@_friendly
def verify(model_name, version, alias):
    """Check a version's delta stores: every chunk it still needs (size, digest, decodes), each
    store's own manifest against the version's copy, and that no chunk file of a purged step is
    left on disk; for a purged version, that its purge finished. With the record key the sealed
    chunks are also authenticated and decoded; without it, their size and digest (BLAKE3; sha256 in stores
    written before format 4) are checked. Chunks of steps the version
    already rolled back (deleted by `purge`) are counted but do not fail the check."""
    from .jobs.verify import verify_version

    r = verify_version(model_name, version=version, alias=alias)
    for line in r.problems():
        click.echo(line, err=True)
    for line in r.lines():
        click.echo(line)
    if not r.ok:
        raise click.ClickException(r.summary())


if __name__ == "__main__":  # pragma: no cover
    main()
