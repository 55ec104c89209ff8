"""The Spark engine: the same verbs as the in-process engine on Spark DataFrames; the step functions run on
the executors (``mapInArrow``), shuffles and joins are Spark's, nothing per row comes back to the driver.

* reading: one task per parquet of the download folder (or part of a decision table) reads it with the same
  Python reader as the in-process engine (:mod:`ccmb.corpus.tables`), so both see the same rows and row ids;
* ``map``: ``mapInArrow`` over batches; ``shuffle``: ``repartition(P, by)`` then the step over each whole
  partition (rows with equal ``by`` values share one); ``gather``: one partition;
* ``write_table``: ``orderBy`` (range partitions in order), each task writes its part with the one part
  writer and returns its entry; the driver publishes the marker (:mod:`ccmb.corpus.tables.writer`).

``P`` is ``spark.sql.shuffle.partitions``, sized to the input unless the user set it. Errors a step raises
on an executor (a :class:`~ccmb.corpus.tables.schema.CurationError` naming a file) come back as that error.
The download folder and the outputs must be on storage every executor reads and writes: a shared filesystem,
or object storage through fsspec URLs (``s3://bucket/dl``): the tasks read and write through
:mod:`ccmb.storage` themselves (pyarrow over fsspec files), so no Hadoop connector is needed. The driver's
fsspec options (:func:`ccmb.storage.configure`, ``FSSPEC_*``) travel with every task that does I/O;
credentials come from the executors' environment (``spark.executorEnv.*``, instance roles, ``~/.aws``).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from ... import storage
from ...spark import AUTO_SHUFFLE_FLAG, get_spark_session
from ...types import PathLike
from ..tables import decisions
from ..tables.dataflow import Fn, concat, conform
from ..tables.folder import (DEFAULT_BATCH_ROWS, DownloadFolder, batch_schema, iter_file_batches, iter_parquet_batches,
                             parquet_schema)
from ..tables.schema import CurationError
from ..tables.writer import Summary, publish_parts, temp_folder, write_part

logger = logging.getLogger(__name__)

#: Shuffle input per partition when ccmb sizes ``spark.sql.shuffle.partitions`` (AQE coalesces further).
SHUFFLE_BYTES = 128 << 20
MAX_SHUFFLE_PARTITIONS = 20_000
_STEP_ERROR = re.compile(r"(?:CurationError|PartitionError): (.*)")


@dataclass(frozen=True)
class SparkDataset:
    """A DataFrame (of ``base``) and the step functions still to run on it, fused into one Python pass when
    the rows are needed (``whole``: the first runs over whole partitions, after a shuffle)."""

    df: Any
    base: pa.Schema
    fns: Tuple[Fn, ...] = ()
    whole: bool = False

    @property
    def schema(self) -> pa.Schema:
        return self.fns[-1].schema if self.fns else self.base


def spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


# ------------------------------------------------------------------------------------------- in the tasks

def _batches(tables, schema: pa.Schema):
    for t in tables:
        if t.num_rows:
            yield from conform(t, schema).to_batches()


def _in_tables(batches, schema: pa.Schema):
    for b in batches:
        yield conform(pa.Table.from_batches([b]), schema)


def _read_folder_task(files, columns, batch_rows, fn, batches):
    for b in batches:
        for i in b.column(0).to_pylist():
            tables = iter_file_batches(files[i], i, columns, batch_rows)
            yield from _batches((fn(t) if fn else t for t in tables), fn.schema if fn else batch_schema(columns))


def _read_table_task(parts, columns, fn, out_schema, batches):
    for b in batches:
        for i in b.column(0).to_pylist():
            path, sha, rows = parts[i]
            tables = decisions.iter_part_batches(path, sha, columns, DEFAULT_BATCH_ROWS, rows)
            yield from _batches((fn(t) if fn else t for t in tables), out_schema)


def _read_files_task(paths, columns, schema, fn, batches):
    for b in batches:
        for i in b.column(0).to_pylist():
            tables = iter_parquet_batches(paths[i], columns, schema, DEFAULT_BATCH_ROWS)
            yield from _batches((fn(t) if fn else t for t in tables), fn.schema if fn else schema)


def _with_storage(conf, task, batches):
    """``task`` over ``batches`` with the driver's fsspec options applied first (in the executor)."""
    storage.apply_settings(conf)
    yield from task(batches)


def _job_with_storage(conf, fn, job):
    storage.apply_settings(conf)
    return fn(job)


def _io(task):
    """A task that reads or writes corpus data, carrying the driver's fsspec options."""
    conf = storage.settings()
    return functools.partial(_with_storage, conf, task) if conf else task


def _apply(fns, table: pa.Table) -> pa.Table:
    for fn in fns:
        table = fn(table)
    return table


def _fns_task(fns, in_schema: pa.Schema, whole: bool, batches):
    """The pending step functions of a dataset over a partition: the first over the whole partition when
    ``whole``, the others (or all) batch by batch."""
    if whole:
        table = concat(_in_tables(batches, in_schema), in_schema)
        if table.num_rows:
            yield from _batches([_apply(fns, table)], fns[-1].schema)
        return
    yield from _batches((_apply(fns, t) for t in _in_tables(batches, in_schema)), fns[-1].schema)


def _counts_task(batches):
    from pyspark import TaskContext

    n = sum(b.num_rows for b in batches)
    yield pa.RecordBatch.from_pydict({"p": pa.array([TaskContext.get().partitionId()], pa.int32()),
                                      "n": pa.array([n], pa.int64())})


def _position_task(offsets, column: str, in_schema: pa.Schema, batches):
    from pyspark import TaskContext

    at = offsets.get(TaskContext.get().partitionId(), 0)
    for t in _in_tables(batches, in_schema):
        yield from t.append_column(column, pa.array(np.arange(at, at + t.num_rows, dtype=np.int64))).to_batches()
        at += t.num_rows


def _write_task(folder: str, schema: pa.Schema, batches):
    from pyspark import TaskContext

    entry = write_part(folder, TaskContext.get().partitionId(), _in_tables(batches, schema), schema)
    if entry is not None:
        yield pa.RecordBatch.from_pydict({"entry": [json.dumps(entry)]})


# ------------------------------------------------------------------------------------------- the engine

class SparkEngine:
    """See the module docstring."""

    name = "spark"

    def __init__(self, spark, input_bytes: int = 0, progress: bool = False) -> None:
        self.spark = spark
        self.progress = progress
        self.partitions = size_shuffle_partitions(spark, input_bytes)
        self._cached: List[Any] = []

    def close(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()

    def __enter__(self) -> "SparkEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _action(self, fn: Callable[[], Any]) -> Any:
        """Run a Spark action; a step's CurationError on an executor is raised here as itself."""
        try:
            return fn()
        except CurationError:
            raise
        except Exception as exc:  # noqa: BLE001  (Py4J / PythonException wrap the executor's error)
            m = _STEP_ERROR.search(str(exc))
            if m:
                raise CurationError(m.group(1).strip()) from exc
            raise

    def _ids(self, n: int):
        return self.spark.range(0, max(n, 0), 1, numPartitions=max(1, n))

    @staticmethod
    def _df(ds: SparkDataset):
        """The DataFrame of a dataset, its pending step functions run (in one Python pass)."""
        if not ds.fns:
            return ds.df
        task = _io(functools.partial(_fns_task, ds.fns, ds.base, ds.whole))  # steps may read tars
        return ds.df.mapInArrow(task, spark_schema(ds.schema))

    # ----------------------------------------------------------------------------------------- sources
    def read_folder(self, folder: DownloadFolder, columns: Sequence[str], fn: Optional[Fn] = None) -> SparkDataset:
        files = tuple(str(p) for p in folder.parquets)
        schema = fn.schema if fn else batch_schema(columns)
        task = _io(functools.partial(_read_folder_task, files, tuple(columns), DEFAULT_BATCH_ROWS, fn))
        return SparkDataset(self._ids(len(files)).mapInArrow(task, spark_schema(schema)), schema)

    def read_table(self, table: decisions.DecisionTable, columns: Sequence[str],
                   fn: Optional[Fn] = None) -> SparkDataset:
        parts = tuple((str(p), sha, rows) for p, sha, rows in table.parts)
        base = pa.schema([decisions.DECISION_SCHEMA.field(c) for c in columns])
        schema = fn.schema if fn else base
        task = _io(functools.partial(_read_table_task, parts, tuple(columns), fn, schema))
        return SparkDataset(self._ids(len(parts)).mapInArrow(task, spark_schema(schema)), schema)

    def read_files(self, paths: Sequence[PathLike], columns: Sequence[str], fn: Optional[Fn] = None) -> SparkDataset:
        schema = parquet_schema(paths[0], columns)
        task = _io(functools.partial(_read_files_task, tuple(str(p) for p in paths), tuple(columns), schema, fn))
        out = fn.schema if fn else schema
        return SparkDataset(self._ids(len(paths)).mapInArrow(task, spark_schema(out)), out)

    def from_arrow(self, table: pa.Table) -> SparkDataset:
        if not table.num_rows:
            return SparkDataset(self.spark.createDataFrame([], spark_schema(table.schema)), table.schema)
        return SparkDataset(self.spark.createDataFrame(table), table.schema)

    # ----------------------------------------------------------------------------------------- verbs
    def map(self, ds: SparkDataset, fn: Fn, partitioned_by: Optional[Sequence[str]] = None) -> SparkDataset:
        return SparkDataset(ds.df, ds.base, ds.fns + (fn,), ds.whole)  # runs with the pending ones

    def shuffle(self, ds: SparkDataset, by: Sequence[str], fn: Optional[Fn] = None, desc: str = "",
                min_partitions: int = 1) -> SparkDataset:
        df = self._df(ds).repartition(max(self.partitions, int(min_partitions)), *by)
        return SparkDataset(df, ds.schema, (fn,) if fn else (), whole=fn is not None)

    def join(self, left: SparkDataset, right: SparkDataset, on: Sequence[str], how: str = "left",
             desc: str = "") -> SparkDataset:
        kind = {"left": "left", "inner": "inner", "anti": "left_anti"}[how]
        # a shuffle join, never a broadcast: the size of a step's output is unknown when the plan is made,
        # and a "small" side that is not small would be collected by the driver
        df = self._df(left).join(self._df(right).hint("shuffle_hash"), list(on), kind)
        if how == "anti":
            return SparkDataset(df.select(*left.schema.names), left.schema)
        schema = pa.schema(list(left.schema) + [f for f in right.schema if f.name not in on])
        return SparkDataset(df.select(*schema.names), schema)

    def union(self, *datasets: SparkDataset) -> SparkDataset:
        schema = datasets[0].schema
        df = self._df(datasets[0])
        for d in datasets[1:]:
            df = df.unionByName(self._df(d).select(*schema.names))
        return SparkDataset(df, schema)

    def gather(self, ds: SparkDataset, fn: Optional[Fn] = None) -> SparkDataset:
        df = self._df(ds).repartition(1)
        return SparkDataset(df, ds.schema, (fn,) if fn else (), whole=fn is not None)

    def cache(self, ds: SparkDataset, desc: str = "") -> SparkDataset:
        """Compute ``ds`` once and cut its lineage (a local checkpoint on the executors' disks: the plans of
        later steps start here instead of nesting every earlier step, and a big partition is streamed)."""
        from pyspark import StorageLevel

        df = self._action(lambda: self._df(ds).localCheckpoint(eager=False, storageLevel=StorageLevel.DISK_ONLY))
        self._cached.append(df)
        return SparkDataset(df, ds.schema)

    def collect(self, ds: SparkDataset, desc: str = "") -> pa.Table:
        table = self._action(self._df(ds).toArrow)
        return conform(table, ds.schema) if table.num_rows else ds.schema.empty_table()

    def count(self, ds: SparkDataset) -> int:
        return int(self._action(self._df(ds).count))

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any], desc: str = "") -> List[Any]:
        jobs = list(jobs)
        if not jobs:
            return []
        conf = storage.settings()
        job = functools.partial(_job_with_storage, conf, fn) if conf else fn
        rdd = self.spark.sparkContext.parallelize(jobs, len(jobs)).map(job)
        return self._action(rdd.collect)

    def _ordered(self, ds: SparkDataset, by: Sequence[str]):
        from pyspark.sql import functions as F

        return self._df(ds).orderBy(*[F.col(c).asc_nulls_last() for c in by])

    def sort(self, ds: SparkDataset, by: Sequence[str], position: Optional[str] = None,
             desc: str = "") -> SparkDataset:
        ordered = self.cache(SparkDataset(self._ordered(ds, by), ds.schema)).df
        if not position:
            return SparkDataset(ordered, ds.schema)
        counts = self._action(ordered.mapInArrow(_counts_task, "p int, n long").collect)
        offsets, at = {}, 0
        for r in sorted(counts, key=lambda r: r["p"]):
            offsets[int(r["p"])] = at
            at += int(r["n"])
        schema = pa.schema(list(ds.schema) + [pa.field(position, pa.int64())])
        task = functools.partial(_position_task, offsets, position, ds.schema)
        return SparkDataset(ordered.mapInArrow(task, spark_schema(schema)), schema)

    def write_table(self, ds: SparkDataset, path: PathLike, *, kind: Optional[str], info: Optional[str] = None,
                    source: Optional[Dict[str, Any]] = None, parts: int = 0, sort_by: Sequence[str] = ("key",),
                    schema: Optional[pa.Schema] = None, desc: str = "", new: bool = False) -> Summary:
        """Write ``ds`` sorted by ``sort_by`` as a folder of parts (one per Spark partition, written by its
        task) and the marker; ``parts`` does not apply (Spark's range partitions decide); ``new``: nothing is
        at ``path`` yet."""
        schema = schema or ds.schema
        tmp = temp_folder(path, new=new)
        task = _io(functools.partial(_write_task, str(tmp), schema))
        ordered = self._ordered(SparkDataset(self._df(ds).select(*schema.names), schema), sort_by)
        rows = self._action(ordered.mapInArrow(task, "entry string").collect)
        return publish_parts(tmp, path, [json.loads(r["entry"]) for r in rows], kind=kind, info=info, source=source)


def size_shuffle_partitions(spark, input_bytes: int) -> int:
    """Size ``spark.sql.shuffle.partitions`` to the input (its parquet bytes / 128 MB, at least one per core,
    a multiple of the cores) unless the user set it (``--spark-conf``); returns the value."""
    if spark.conf.get(AUTO_SHUFFLE_FLAG, "false") != "true":
        return int(spark.conf.get("spark.sql.shuffle.partitions"))
    cores = max(1, spark.sparkContext.defaultParallelism)
    n = min(MAX_SHUFFLE_PARTITIONS, max(1, -(-int(input_bytes) // SHUFFLE_BYTES)))
    n = cores * -(-n // cores)
    spark.conf.set("spark.sql.shuffle.partitions", str(n))
    logger.info("spark.sql.shuffle.partitions=%d (%.0f MB of input, %d cores)", n, input_bytes / 2**20, cores)
    return n


def session(master: Optional[str] = None, conf: Optional[dict] = None):
    """A Spark session for the curation commands (:func:`ccmb.spark.get_spark_session`); ``conf`` are Spark
    settings (``--spark-conf KEY=VALUE``)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter (numpy, ccmb)
    return get_spark_session(master, app_name="ccmb-curation", conf=conf or None)


def spark_available() -> Optional[str]:
    """None when pyspark imports, else the reason."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None
