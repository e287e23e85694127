"""A local OTLP/HTTP trace receiver: decodes what the gateway exports with the official
`opentelemetry-proto` package and prints one JSON line per span on stdout.

Prints `listening PORT` first (it binds 127.0.0.1 on an ephemeral port); runs until killed.
Anything that is not a valid ExportTraceServiceRequest on POST /v1/traces gets a 400 and a
line `{"error": ...}`.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                raise ValueError(f"expected protobuf at /v1/traces, found {self.headers.get('content-type')} at {self.path}")
            request.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decoding failure is the exporter's
            print(json.dumps({"error": str(e)}), flush=True)
            self.send_response(400)
            self.end_headers()
            return
        for resource_spans in request.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    print(json.dumps({
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "kind": span.kind,
                        "status": span.status.code,
                        "duration_ns": span.end_time_unix_nano - span.start_time_unix_nano,
                        "attributes": {a.key: value(a.value) for a in span.attributes},
                        "resource": resource,
                        "header": self.headers.get("x-collector-key"),
                    }), flush=True)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Receiver)
print(f"listening {server.server_port}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
