#!/usr/bin/env python3
"""Sends log records through the real OpenTelemetry Python SDK to an OTLP/HTTP endpoint.

Usage: export_logs.py ENDPOINT COUNT
  ENDPOINT  the full logs URL, e.g. http://127.0.0.1:4318/v1/logs
  COUNT     how many records of each level (debug, info, warning, error) to log

Run by tests/otlp.rs, in front of verbosity-guard. The pipeline is what an application uses:
a LoggerProvider with a BatchLogRecordProcessor and the OTLP/HTTP log exporter (protobuf, no
compression: the SDK defaults), fed by the standard `logging` module through the SDK's
LoggingHandler. The messages are "<level> record <i> of <COUNT>", i = 0..COUNT-1, so the test
knows every body to expect.

The records go out in two phases so that both of the guard's answers reach the exporter:
first half the debug records alone, flushed (batches in which every record is debug: the guard
answers them itself), then the other debug records interleaved with info, warning and error
(batches the guard rewrites and forwards).

Exits 0 when every export succeeded; 1, with the reason on stderr, when any export failed or
the SDK logged a warning or an error of its own (it logs failed exports instead of raising).
Prints one line on stdout: `sdk=VERSION exports=N records=N`.
"""

import logging
import sys
import warnings

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.version import __version__ as SDK_VERSION

SERVICE_NAME = "verbosity-guard-sdk-test"
LOGGER_NAME = "vehicle.telemetry"


class Recording(LogRecordExporter):
    """Passes every batch to the real exporter and remembers what it answered."""

    def __init__(self, inner):
        self.inner = inner
        self.results = []
        self.records = 0

    def export(self, batch):
        result = self.inner.export(batch)
        self.results.append(result)
        if result == LogRecordExportResult.SUCCESS:
            self.records += len(batch)
        return result

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)

    def shutdown(self):
        self.inner.shutdown()


class Collect(logging.Handler):
    """Keeps what the SDK logs about itself (failed exports, dropped records)."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: export_logs.py ENDPOINT COUNT")
    endpoint, count = sys.argv[1], int(sys.argv[2])

    sdk_problems = Collect()
    logging.getLogger("opentelemetry").addHandler(sdk_problems)

    exporter = Recording(OTLPLogExporter(endpoint=endpoint, timeout=10))
    provider = LoggerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_log_record_processor(
        # Small batches, so that the export is several requests.
        BatchLogRecordProcessor(exporter, max_export_batch_size=8, schedule_delay_millis=200)
    )
    with warnings.catch_warnings():
        # 1.45 deprecates the SDK's handler in favour of opentelemetry-instrumentation-logging;
        # it is still the SDK's own bridge from `logging`, and what this test is about.
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)

    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(handler)

    def message(level, i):
        return f"{level} record {i} of {count}"

    first = count // 2
    for i in range(first):
        log.debug(message("debug", i))
    flushed = provider.force_flush(timeout_millis=20000)
    for i in range(count):
        if i + first < count:
            log.debug(message("debug", i + first))
        log.info(message("info", i))
        log.warning(message("warning", i))
        log.error(message("error", i))
    flushed = provider.force_flush(timeout_millis=20000) and flushed
    provider.shutdown()

    print(f"sdk={SDK_VERSION} exports={len(exporter.results)} records={exporter.records}")
    failed = [r for r in exporter.results if r != LogRecordExportResult.SUCCESS]
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {len(exporter.results)} exports failed")
    if not flushed:
        problems.append("force_flush timed out")
    if exporter.records != 4 * count:
        problems.append(f"exported {exporter.records} records, expected {4 * count}")
    problems += sdk_problems.messages
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
