#!/usr/bin/env python3
"""Check longconn's OTLP/JSON files against the official OpenTelemetry schema.

Usage: otlp_check.py metrics|logs FILE...

Every line of every FILE must be one ExportMetricsServiceRequest (or
ExportLogsServiceRequest) in the protobuf JSON mapping, parsed by
google.protobuf.json_format with unknown fields refused, using the generated
classes of the opentelemetry-proto package. On top of the schema, the checks
the OpenTelemetry Collector's otlpjsonfile receiver makes in effect: a file
ends with a newline (a line without one is still being written), no line is
empty, a request holds at least one resource, a logs request at least one
log record, and no metric is without data points (the Collector drops those).

Exit codes: 0 every line valid (prints "N lines valid"), 1 a line is invalid
(prints FILE:LINE and the parser's error, for the first failure only),
2 bad command line or an empty file, 3 opentelemetry-proto is not installed.

The test scripts run it in a venv:
    python3 -m venv .venv-otlp && .venv-otlp/bin/pip install -q opentelemetry-proto
"""

import sys


def usage():
    print("usage: otlp_check.py metrics|logs FILE...", file=sys.stderr)
    return 2


def load(signal):
    """The request class for `signal` and a function returning a problem
    the schema does not catch, or None."""
    from google.protobuf import json_format  # noqa: F401  (checked import)

    if signal == "metrics":
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest as Request,
        )

        def problem(msg):
            if not msg.resource_metrics:
                return "no resourceMetrics"
            for rm in msg.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        if kind is None:
                            return f"metric {metric.name!r} has no data"
                        if not getattr(metric, kind).data_points:
                            return f"metric {metric.name!r} has no data points"
            return None

    else:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest as Request,
        )

        def problem(msg):
            if not msg.resource_logs:
                return "no resourceLogs"
            records = sum(
                len(sl.log_records) for rl in msg.resource_logs for sl in rl.scope_logs
            )
            if records == 0:
                return "no logRecords"
            return None

    return Request, problem


def main(argv):
    if len(argv) < 3 or argv[1] not in ("metrics", "logs"):
        return usage()
    signal, files = argv[1], argv[2:]
    try:
        Request, problem = load(signal)
        from google.protobuf import json_format
    except ImportError as e:
        print(
            f"otlp_check.py: {e}: install opentelemetry-proto "
            "(pip install opentelemetry-proto)",
            file=sys.stderr,
        )
        return 3

    total = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            print(f"{path}: {e.strerror}", file=sys.stderr)
            return 2
        if not data:
            print(f"{path}: empty file", file=sys.stderr)
            return 2
        lines = data.split(b"\n")
        if lines[-1]:
            print(
                f"{path}:{len(lines)}: last line does not end with a newline",
                file=sys.stderr,
            )
            return 1
        for number, raw in enumerate(lines[:-1], start=1):
            where = f"{path}:{number}"
            if not raw:
                print(f"{where}: empty line", file=sys.stderr)
                return 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                print(f"{where}: not UTF-8: {e}", file=sys.stderr)
                return 1
            msg = Request()
            try:
                json_format.Parse(line, msg, ignore_unknown_fields=False)
            except json_format.ParseError as e:
                print(f"{where}: {e}", file=sys.stderr)
                return 1
            bad = problem(msg)
            if bad:
                print(f"{where}: {bad}", file=sys.stderr)
                return 1
            total += 1
    print(f"{total} lines valid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
