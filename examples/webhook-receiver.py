#!/usr/bin/env python3
"""A webhook receiver for trying PulseHub destinations (docs/destinations.md).

Listens on 127.0.0.1:PORT, verifies each delivery's Standard Webhooks
signature with the `standardwebhooks` library (pip install standardwebhooks),
prints one line per message and answers 204; a delivery whose signature does
not verify is answered 401 and printed as refused.

    python3 examples/webhook-receiver.py --port 9000 --secret whsec_...
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", required=True, help="the destination's whsec_ secret")
    args = parser.parse_args()
    webhook = Webhook(args.secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                batch = webhook.verify(body, headers)
            except Exception as error:  # the library raises on any bad signature
                print(f"refused {headers.get('webhook-id')}: {error}", flush=True)
                self.send_response(401)
                self.end_headers()
                return
            for message in batch["data"]:
                print(f"verified {headers['webhook-id']}: {json.dumps(message)}", flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_):
            pass

    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
