"""The `connector` command line. Commands stay thin: they parse options, call the library,
and print. This is the only place that turns ConnectorError into exit codes:
0 done, 1 error, 2 bad usage or config, 3 finished but some documents failed and were recorded.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import click
import numpy as np

from connector.config import load_config
from connector.errors import ConnectorError

def emit(ctx: click.Context, data, human: str | None = None) -> None:
    """Print `data` as one JSON document with --json, else the human text."""
    if ctx.meta.get("json"):
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        click.echo(human if human is not None else json.dumps(data, ensure_ascii=False, indent=2))


# Characters that move the cursor, end lines or recolour a terminal: a file name holding them
# could forge output lines ("evil\n  FAILED x: ...") or hide text. Bidi overrides reorder it.
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value, keep_newlines: bool = False) -> str:
    """`value` as text safe for a terminal line: control, line-separator and bidi-override
    characters become escapes (`\\n`, `\\x1b`, `\\u202e`). Every doc_id, path, reason and store
    message in human-readable output goes through here; --json output is exact JSON instead."""
    text = str(value)
    return "".join(_escape(c) if _unsafe(c) and not (keep_newlines and c == "\n") else c for c in text)


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def _escape(char: str) -> str:
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def json_option(f):
    def mark(ctx, _param, value):
        ctx.meta["json"] = value
        return value

    return click.option("--json", "as_json", is_flag=True, callback=mark, expose_value=False, is_eager=True,
                        help="Print one JSON document on stdout.")(f)


def engine_option(f):
    return click.option("--engine", type=click.Choice(["local", "ray"]),
                        help="Where the encoding runs for this run: local (this process) or ray (the config's Ray "
                             "cluster, or address auto). Default: the config's engine.")(f)


def config_option(required=True):
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        required=required, help="Path to the YAML config.")


class ConnectorGroup(click.Group):
    """Turns a ConnectorError raised by any command into its message and exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConnectorError as err:
            click.echo(f"error: {printable(err, keep_newlines=True)}", err=True)
            if ctx.meta.get("json"):
                click.echo(json.dumps({"error": str(err), "exit_code": err.exit_code}, ensure_ascii=False))
            raise click.exceptions.Exit(err.exit_code) from None


@click.group(cls=ConnectorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="connector")
def cli():
    """Keep a vector store (Qdrant or Milvus) in sync with a folder of documents,
    encoded on the CPU with BAAI/bge-m3 into dense + sparse vectors.

    \b
    Example:
      connector sync -c configs/qdrant-local.yaml
      connector search -c configs/qdrant-local.yaml "how do I reset my password"
    """


# ---- sync -------------------------------------------------------------------------------
@cli.command()
@config_option()
@click.option("--prune", is_flag=True, help="Delete the points of documents that are gone from the source.")
@click.option("--dry-run", is_flag=True, help="Show what would change; encode and write nothing.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@click.option("--take-over", is_flag=True,
              help="Write the collection even though another state dir owns it (that one must no longer write it).")
@click.option("--metrics-file", type=click.Path(dir_okay=False, path_type=Path),
              help="At the end, write the run's Prometheus metrics to this file (node_exporter textfile collector).")
@click.option("--pushgateway", metavar="URL", help="At the end, push the run's metrics to this Prometheus Pushgateway.")
@engine_option
@json_option
@click.pass_context
def sync(ctx, config_path, prune, dry_run, progress, take_over, metrics_file, pushgateway, engine):
    """Sync the source into the store: encode and write only what changed.

    \b
    Example:
      connector sync -c configs/qdrant-local.yaml --prune --json
      connector sync -c configs/qdrant-local.yaml --metrics-file /var/lib/prometheus/node-exporter/kb.prom
      connector sync -c configs/qdrant-local.yaml --engine ray
    """
    from connector.engines import with_engine
    from connector.pipeline import SyncReport, run_sync

    config = with_engine(load_config(config_path), engine)
    _check_metrics_options(metrics_file, pushgateway, dry_run)
    if progress is None:
        progress = sys.stderr.isatty()
    report = SyncReport()
    try:
        run_sync(config, prune=prune, dry_run=dry_run, progress=progress, take_over=take_over, report=report)
    except BaseException as err:  # the metrics still say that this run failed, with what it did so far
        _export_metrics(report, config, metrics_file, pushgateway, err.exit_code if isinstance(err, ConnectorError) else 1)
        raise
    _export_metrics(report, config, metrics_file, pushgateway, report.exit_code)
    emit(ctx, report.to_json(), _sync_text(report))
    ctx.exit(report.exit_code)


def _check_metrics_options(metrics_file: Path | None, pushgateway: str | None, dry_run: bool) -> None:
    """Bad metrics options fail before the sync starts, not after it ran."""
    from connector.locations import check_server_url

    if dry_run and (metrics_file or pushgateway):
        raise click.UsageError("--metrics-file and --pushgateway report a sync that ran: a --dry-run writes no metrics")
    if metrics_file is not None and not metrics_file.parent.is_dir():
        raise click.BadParameter(f"the folder {printable(metrics_file.parent)} does not exist: create it, or point "
                                 "--metrics-file into node_exporter's --collector.textfile.directory",
                                 param_hint="--metrics-file")
    if pushgateway is not None:
        try:
            check_server_url(pushgateway, "http://127.0.0.1:9091")
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--pushgateway") from None


def _export_metrics(report, config, metrics_file: Path | None, pushgateway: str | None, exit_code: int) -> None:
    """Write and push the run's metrics (when asked); a failure is a warning, never the sync's result."""
    if metrics_file is None and pushgateway is None:
        return
    from connector.run_metrics import export_run_metrics

    for warning in export_run_metrics(report, config, path=metrics_file, pushgateway=pushgateway, exit_code=exit_code):
        click.echo(f"warning: {printable(warning)}", err=True)
        report.warnings.append(warning)


def _sync_text(report) -> str:
    d, c = report.documents, report.chunks
    head = "dry run, nothing written: " if report.dry_run else ""
    lines = [
        f"{head}documents: {d['seen']} seen, {d['new']} new, {d['changed']} changed, {d['unchanged']} unchanged, "
        f"{d['deleted']} deleted, {d['failed']} failed",
        f"chunks: {c['upserted']} {'to upsert' if report.dry_run else 'upserted'} "
        f"({c['encoded']} {'to encode' if report.dry_run else 'encoded'}, {c['cached']} with a reused vector), "
        + (f"{c['payload_updated']} {'to update' if report.dry_run else 'updated'} (payload only), "
           if c["payload_updated"] else "")
        + f"{c['deleted']} {'to delete' if report.dry_run else 'deleted'}"
        + (f", {c['failed']} failed" if c["failed"] else ""),
    ]
    for change in report.changes:
        lines.append(f"  {change['action']:7} {printable(change['doc_id'])}"
                     + (f"  (+{change['chunks_to_upsert']} / -{change['chunks_to_delete']} chunks)"
                        if "chunks_to_upsert" in change else f"  (-{change['chunks_to_delete']} chunks)"))
    for f in report.failures:
        lines.append(f"  FAILED {printable(f['doc_id'])}: {printable(f['reason'])}")
    for e in report.errors:
        lines.append(f"  ERROR ({e['operation']}): {printable(e['reason'])}")
    for o in report.outages:
        lines.append(f"  store down from {o['started']} to {o['ended'] or '(still down)'}, {o['probes']} probe(s)")
    return "\n".join(lines)


# ---- search -----------------------------------------------------------------------------
@cli.command()
@config_option()
@click.argument("query")
@click.option("--mode", type=click.Choice(["hybrid", "dense", "sparse", "legacy"]), default="hybrid", show_default=True,
              help="hybrid = reciprocal rank fusion of the dense and the sparse ranking; legacy = the projected vector.")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--collection", help="Search this collection (a `backfill` target) instead of the config's.")
@json_option
@click.pass_context
def search(ctx, config_path, query, mode, limit, collection):
    """Search the collection with a query encoded (and projected) like the documents.

    \b
    Example:
      connector search -c configs/qdrant-local.yaml "reset password" --mode sparse --limit 5
      connector search -c configs/qdrant-local.yaml "reset password" --collection kb_768
    """
    from connector import api

    config = load_config(config_path)
    data = api.search(config, query, encoder=api.open_encoder(config), mode=mode, limit=limit, collection=collection)
    rows = data["hits"]
    human = "\n".join(
        f"{n:>3}. {r['score']:.4f}  {printable(r['doc_id'])}#{r['chunk_index']}  {printable(_snippet(r['text']))}"
        for n, r in enumerate(rows, 1)
    ) or "no hits"
    emit(ctx, data, human)


def _snippet(text: str | None, width: int = 100) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- status -----------------------------------------------------------------------------
@cli.command()
@config_option()
@json_option
@click.pass_context
def status(ctx, config_path):
    """Show ledger and store counts, and the documents that failed.

    \b
    Example:
      connector status -c configs/qdrant-local.yaml --json
    """
    from connector import api

    config = load_config(config_path)
    data = api.status(config)
    led, store = data["ledger"], data["store"]
    lines = [
        f"target: {printable(data['target'])}",
        f"ledger: {led['documents']} documents, {led['chunks']} chunks, {led['failed_documents']} failed, "
        f"{led['pending_deletes']} pending deletes" if data["ledger_exists"] else _no_ledger(config),
        f"chunking: version {data['chunking_version']}",
        "store: " + (f"error: {printable(store['error'])}" if "error" in store else
                     f"{store['points']} points" if store["exists"] else "collection does not exist yet"),
    ]
    lines += [f"  FAILED {printable(f['doc_id'])}: {printable(f['reason'])}" for f in data["failed_documents"]]
    if led["dead_letters"]:
        lines.append(f"  {led['dead_letters']} dead letter(s): see `connector failed`, replay with `connector retry`")
    emit(ctx, data, "\n".join(lines))
    if "error" in store:
        ctx.exit(1)


def _no_ledger(config) -> str:
    return (f"ledger: none yet in {printable(config.state_dir)} (nothing was synced with this config; "
            "`connector sync` creates it)")


# ---- embed / similarity -------------------------------------------------------------------
def _encoder_from(config_path: Path | None, model: str | None, max_length: int | None):
    """The config (or None), its encoder (its backend, torch or onnx) and its query cleaning, from
    `-c CONFIG` or `--model` (no config: the texts are encoded as given)."""
    from connector import api

    if (config_path is None) == (model is None):
        raise click.UsageError("give exactly one of -c CONFIG or --model PATH_OR_HUB_ID")
    config = load_config(config_path) if config_path is not None else None
    encoder = api.open_encoder(config, model=model, max_length=max_length)
    return config, encoder, api.query_cleaner(config)


def encoder_options(f):
    f = config_option(required=False)(f)
    f = click.option("--model", help="Model folder or hub id (instead of -c).")(f)
    return click.option("--max-length", type=click.IntRange(8, 8192), help="Token limit per text.")(f)


@cli.command()
@encoder_options
@click.argument("texts", nargs=-1, required=True)
@json_option
@click.pass_context
def embed(ctx, config_path, model, max_length, texts):
    """Encode texts, cleaned like queries (with -c), and print their dense and sparse vectors.

    \b
    Example:
      connector embed --model ./models/bge-m3 --json "first text" "second text"
    """
    from connector import api

    config, encoder, clean = _encoder_from(config_path, model, max_length)
    data = api.embed(encoder, list(texts), clean=clean, projection=api.legacy_projection(config, encoder))
    human = "\n".join(
        f"{_snippet(r['text'], 50)!r}: dense[{len(r['dense'])}] norm={np.linalg.norm(r['dense']):.4f}, "
        f"sparse {len(r['sparse']['indices'])} tokens" for r in data["embeddings"]
    )
    emit(ctx, data, human)


@cli.command()
@encoder_options
@click.argument("text_a")
@click.argument("text_b")
@click.option("--mode", type=click.Choice(["dense", "sparse", "colbert", "hybrid"]), default="hybrid",
              show_default=True, help="The score in `score`; every score is shown.")
@json_option
@click.pass_context
def similarity(ctx, config_path, model, max_length, text_a, text_b, mode):
    """Every score of two texts (dense cosine, lexical, ColBERT, hybrid = dense + 0.3 * lexical, and
    FlagEmbedding's weighted sum) with the shared tokens behind the lexical score; cleaned like
    queries (with -c). ColBERT treats TEXT_A as the query.

    \b
    Example:
      connector similarity --model ./models/bge-m3 "What is BGE M3?" "BGE M3 is an embedding model"
    """
    from connector import api

    _, encoder, clean = _encoder_from(config_path, model, max_length)
    data = api.similarity(encoder, text_a, text_b, mode=mode, clean=clean)
    emit(ctx, data, _similarity_text(data))


def _similarity_text(data: dict) -> str:
    sc = data["scores"]
    lines = [f"{name:12} {sc[name]:.6f}" if sc[name] is not None else f"{name:12} -" for name in
             ("dense", "lexical", "colbert", "hybrid", "weighted")]
    lines.append(f"tokens: a {data['a']['tokens']}, b {data['b']['tokens']}; shared: "
                 + (", ".join(f"{printable(t['token'])} ({t['product']:.4f})" for t in data["shared_tokens"][:10])
                    or "none"))
    if data["colbert_error"]:
        lines.append(f"colbert: {printable(data['colbert_error'])}")
    return "\n".join(lines)


# ---- failed / retry / verify ------------------------------------------------------------
@cli.command()
@config_option()
@json_option
@click.pass_context
def failed(ctx, config_path):
    """List the dead letters (writes the store refused after every retry), grouped by error.

    \b
    Example:
      connector failed -c configs/milvus-server.yaml --json
    """
    from connector import api

    config = load_config(config_path)
    data = api.failed(config)
    groups = {g["error"]: g for g in data["groups"]}
    lines = [f"{data['dead_letters']} dead letter(s): {data['documents']} document(s), {data['points']} point(s)"]
    if not data["ledger_exists"]:
        lines.append(_no_ledger(config))
    for g in groups.values():
        ids = ", ".join(map(str, g["dead_letters"][:10])) + (", ..." if len(g["dead_letters"]) > 10 else "")
        lines.append(f"- {g['kind']} ({len(g['dead_letters'])} letter(s), {len(g['documents'])} document(s), "
                     f"{g['points']} point(s), ids {ids}): {printable(g['error'])}")
    if data["dead_letters"]:
        lines.append("replay them with: connector retry -c CONFIG")
    emit(ctx, data, "\n".join(lines))


@cli.command()
@config_option()
@click.option("--id", "ids", type=int, multiple=True, help="Replay only this dead letter (repeatable).")
@click.option("--limit", type=click.IntRange(1), help="Replay at most this many dead letters, oldest first.")
@json_option
@click.pass_context
def retry(ctx, config_path, ids, limit):
    """Replay dead letters into the store without re-encoding; advance the ledger on success.

    \b
    Example:
      connector retry -c configs/milvus-server.yaml --limit 10 --json
    """
    from connector.recovery import retry_dead_letters

    config = load_config(config_path)
    report = retry_dead_letters(config, ids=list(ids) or None, limit=limit)
    r = report.letters
    lines = [f"dead letters: {r['retried']} retried, {r['succeeded']} succeeded, {r['failed']} failed",
             f"documents committed: {report.documents_committed}, points written: {report.points_written}, "
             f"queued deletes done: {report.points_deleted}"]
    lines += [f"  still failing: dead letter {f['dead_letter']}: {printable(f['error'])}" for f in report.failures[:10]]
    if len(report.failures) > 10:
        lines.append(f"  ... and {len(report.failures) - 10} more (see `connector failed`)")
    emit(ctx, report.to_json(), "\n".join(lines))
    ctx.exit(report.exit_code)


@cli.command()
@config_option()
@click.option("--repair", is_flag=True, help="Delete orphans and rewrite missing or stale points, then verify again.")
@json_option
@click.pass_context
def verify(ctx, config_path, repair):
    """Compare the ledger with the store: missing points, unknown points, stale payloads and counts.

    Exit code 0 when they match, 3 when something differs (after --repair: when it still differs).

    \b
    Example:
      connector verify -c configs/qdrant-local.yaml --repair --json
    """
    from connector import api

    final, ok = api.verify(load_config(config_path), repair=repair)
    lines = [f"ledger points: {final['ledger_points']}, store points: {final['store_points']}",
             f"missing from the store: {len(final['missing'])}, unknown to the ledger: {len(final['orphans'])}, "
             f"stale payloads: {len(final['mismatched'])}, documents with stale counts: {len(final['stale_counts'])}",
             f"dead letters: {final['dead_letters']}, pending deletes: {final['pending_deletes']}"
             + (f", points of other state dirs (shared collection): {final['foreign_points']}"
                if final["foreign_points"] else ""),
             "OK: the store matches the ledger" if ok else "MISMATCH (run `connector verify --repair`)"]
    if final.get("repaired"):
        lines.insert(0, f"repaired: {final['repaired']['orphans_deleted']} orphan(s) deleted, "
                        f"{final['repaired']['points_invalidated']} point(s) rewritten by a sync")
    emit(ctx, final, "\n".join(lines))
    ctx.exit(0 if ok else 3)


@cli.command("export-snapshot")
@config_option()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def export_snapshot(ctx, config_path, out):
    """Write the collection of an embedded Qdrant Edge store as a snapshot file OUT that a Qdrant server
    restores (README: Moving to a server), so nothing is encoded again.

    \b
    Example:
      connector export-snapshot -c configs/demo.yaml kb.snapshot
    """
    from connector import api

    data = api.export_snapshot(load_config(config_path), out)
    emit(ctx, data, f"wrote {printable(data['snapshot'])}: collection '{printable(data['collection'])}', "
                    f"{data['points']} points, {data['bytes']} bytes")


@cli.command()
@config_option()
@json_option
@click.pass_context
def rebind(ctx, config_path):
    """Bind the state dir to the store the config now names, after the collection moved there whole
    (a copied store folder, a snapshot restored on a Qdrant server). Checks first that the store
    holds exactly what the ledger lists (as `verify` does); then the next sync goes on from the
    ledger, encoding nothing again.

    \b
    Example:
      connector rebind -c configs/qdrant-server.yaml
    """
    from connector import api

    data = api.rebind(load_config(config_path))
    if not data["changed"]:
        human = f"the state dir is already bound to {printable(data['target'])}"
    else:
        human = (f"bound to {printable(data['target'])} (was {printable(data['previous_target'])}): "
                 f"its {data['points']} points match the ledger")
    emit(ctx, data, human)


# ---- projection / backfill -----------------------------------------------------------------
@cli.group()
def projection():
    """Fit and show the PCA projection to legacy dimensions (e.g. 1024 -> 768)."""


@projection.command("fit")
@config_option()
@click.option("--dim", type=click.IntRange(2), help="Target size k (default: projection.dim, else 768).")
@click.option("--sample", type=click.IntRange(2), help="Vectors to fit on (default: projection.sample, else 20000).")
@click.option("--from", "source", type=click.Choice(["store", "source"]),
              help="Sample the store's dense vectors, or encode a sample of the source (through the cache). "
                   "Default: the store when the collection holds points, else the source.")
@engine_option
@json_option
@click.pass_context
def projection_fit(ctx, config_path, dim, sample, source, engine):
    """Fit the projection on a sample of dense vectors and save it in the state dir (under the
    state dir's lock, like sync). Without --from: the store's vectors when the collection holds
    points, else a sample of the source, encoded; the output says which (`fitted_from`).

    \b
    Example:
      connector projection fit -c configs/qdrant-local.yaml --dim 768 --from store
    """
    from connector.backfill import fit_projection
    from connector.engines import with_engine

    config = with_engine(load_config(config_path), engine)
    k = dim or (config.projection.dim if config.projection else 768)
    n = sample or (config.projection.sample if config.projection else 20000)
    fitted = fit_projection(config, k, n, source=source or "auto")
    d = fitted.describe()
    where = "the store's vectors" if d["fitted_from"] == "store" else "vectors encoded from the source"
    emit(ctx, d, f"fitted {d['source_dim']} -> {d['k']} on {d['sample_size']} of {where}; explained variance "
                 f"{d['explained_variance']:.4f}; sha256 {d['sha256']}")


@projection.command("show")
@config_option()
@json_option
@click.pass_context
def projection_show(ctx, config_path):
    """Show the fitted projection: k, explained variance, sample size, hash.

    \b
    Example:
      connector projection show -c configs/qdrant-local.yaml --json
    """
    from connector.projection import load

    d = load(load_config(config_path).state_dir).describe()
    emit(ctx, d, "\n".join(f"{key}: {printable(value)}" for key, value in d.items()))


@cli.command()
@config_option()
@click.option("--dim", type=click.IntRange(2), required=True, help="Legacy size k, e.g. 768.")
@click.option("--target", help="Collection to write (default: <collection>_<dim>).")
@click.option("--page-size", type=click.IntRange(1), default=256, show_default=True, help="Points per read and write.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@engine_option
@json_option
@click.pass_context
def backfill(ctx, config_path, dim, target, page_size, progress, engine):
    """Write legacy vectors for every point of the collection into a k-d collection, from the
    stored vectors (no re-encoding: the engine, `--engine` included, is never started). Resumable
    after a kill; re-running is harmless.

    \b
    Example:
      connector backfill -c configs/qdrant-local.yaml --dim 768 --target kb_768
    """
    from connector.backfill import backfill as run_backfill
    from connector.engines import with_engine

    config = with_engine(load_config(config_path), engine)
    report = run_backfill(config, dim, target, progress=sys.stderr.isatty() if progress is None else progress,
                          page_size=page_size)
    p = report.points
    emit(ctx, report.to_json(),
         f"backfilled {printable(report.source_collection)} -> {printable(report.target_collection)} "
         f"({printable(report.field)}, k={report.k}): "
         f"{p['written']} points written in {report.pages} pages, {p['resumed_after']} already done before, "
         f"{p['source']} in the source; projection {report.projection_sha256[:12]}")


# ---- schema -----------------------------------------------------------------------------
@cli.command()
@config_option()
@click.option("--create", is_flag=True, help="Create the collection if it is missing.")
@click.option("--recreate", is_flag=True, help="Drop the collection (all its points) and create it again.")
@click.option("--yes", is_flag=True, help="Confirm --recreate without a prompt.")
@json_option
@click.pass_context
def schema(ctx, config_path, create, recreate, yes):
    """Show the collection layout and the collection's state, or create it.

    \b
    Example:
      connector schema -c configs/milvus-lite.yaml --create
    """
    from connector import api

    config = load_config(config_path)
    if recreate and not yes:
        click.confirm(f"Drop collection '{printable(config.sink.collection)}' and every point in it?", abort=True)
    data = api.schema(config, create=create, recreate=recreate)
    action, info = data["action"], data["store"]
    human = [f"collection '{printable(config.sink.collection)}': {action}; " + ("exists" if info else "does not exist")]
    human += [f"  vector {printable(name)}: {v['kind']}" + (f", {v['distance']}, size {v['size']}" if v["kind"] == "dense" else "")
              for name, v in data["layout"]["vectors"].items()]
    human += [f"  payload {printable(name)}: {f['type']}" + (" (indexed)" if f["index"] else "")
              for name, f in data["layout"]["payload"].items()]
    if info:
        human.append(f"  store: dense size {info['dense_size']}, {info['points']} points")
    emit(ctx, data, "\n".join(human))


# ---- serve ------------------------------------------------------------------------------
@cli.command()
@config_option(required=False)
@click.option("--model", help="Model folder or hub id: an embedding-only service, no store (instead of -c).")
@click.option("--max-length", type=click.IntRange(8, 8192), help="Token limit per text.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key-env", metavar="NAME",
              help="Require 'Authorization: Bearer <key>' on /v1/..., the key read from this environment variable.")
@click.option("--max-texts", type=click.IntRange(1), default=64, show_default=True, help="Texts per request.")
@click.option("--max-chars", type=click.IntRange(1), default=20000, show_default=True, help="Characters per text.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Texts per coalesced encoder call.")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a batch waits for more requests.")
@click.option("--queue", "max_queue", type=click.IntRange(1), default=512, show_default=True,
              help="Texts that may wait for the encoder; past it: 503 with Retry-After.")
@click.option("--cache-mb", type=click.FloatRange(0), default=256, show_default=True,
              help="In-memory embedding cache (LRU).")
@click.option("--coalesce/--no-coalesce", default=True, show_default=True,
              help="Share forward passes between concurrent requests (off: one pass per request).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
def serve(config_path, model, max_length, host, port, api_key_env, max_texts, max_chars, batch_size,
          batch_wait_ms, max_queue, cache_mb, coalesce, log_level):
    """Run bge-m3 as an HTTP service: the JSON API (/v1/embed, /v1/similarity, /v1/similarity/matrix,
    /v1/tokenize, /v1/search), the WebUI at /, /health, /metrics and /docs.

    \b
    Example:
      connector serve -c configs/demo.yaml                 # 127.0.0.1:8000, WebUI at /
      connector serve --model ./models/bge-m3 --port 9000  # embedding-only service, no store
    """
    import os

    try:
        import uvicorn

        from connector.serve.app import ServeSettings, create_app
    except ImportError as err:
        from connector.errors import MissingExtraError

        raise MissingExtraError(err.name or "fastapi", "serve", "connector serve") from None
    if (config_path is None) == (model is None):
        raise click.UsageError("give exactly one of -c CONFIG or --model PATH_OR_HUB_ID")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env, "")
        if not api_key.strip():
            from connector.errors import ConfigError

            raise ConfigError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set or "
                              "empty; export it with the key clients must send")
    if max_queue < max_texts:
        raise click.UsageError(f"--queue ({max_queue}) must be at least --max-texts ({max_texts})")
    if not _loopback(host) and api_key is None:
        click.echo(f"warning: serving on {host} without an API key: anyone who can reach this address can use "
                   "the API and search the collection; use --api-key-env NAME", err=True)
    settings = ServeSettings(config=load_config(config_path) if config_path else None, model=model,
                             max_length=max_length, api_key=api_key, max_texts=max_texts, max_chars=max_chars,
                             max_batch=batch_size, batch_wait_ms=batch_wait_ms, max_queue=max_queue,
                             cache_mb=cache_mb, coalesce=coalesce)
    # uvicorn stops on SIGTERM/SIGINT: no new connections, in-flight requests finish (up to 30 s)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30,
                access_log=log_level in ("info", "debug"))


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- plugins ----------------------------------------------------------------------------
@cli.command("plugins")
@json_option
@click.pass_context
def plugins_command(ctx):
    """List the installed sources, sinks and preprocessors (built-ins included), with the module
    and distribution each comes from and whether it loads.

    \b
    Example:
      connector plugins --json
    """
    from connector import plugins

    groups = {group: [info.to_json() for info in plugins.available(group).values()] for group in plugins.GROUPS}
    lines = []
    for group, rows in groups.items():
        lines.append(group)
        for r in rows:
            status = "ok" if r["status"] == "ok" else f"FAILED: {printable(r['error'])}"
            lines.append(f"  {printable(r['name']):12} {printable(r['module']):45} {printable(r['distribution'])} "
                         f"{printable(r['version'])}  {status}")
    emit(ctx, {"groups": groups}, "\n".join(lines))


# ---- entry point ------------------------------------------------------------------------
def main() -> None:
    """Console-script entry point."""
    cli(prog_name="connector")


if __name__ == "__main__":
    main()
