"""``python3 -m tests.realclient.dnsquery SERVER PORT QUERIES_JSON``: DNS queries with dnspython,
each ``[name, type, "udp"|"tcp", recursion_desired]``; prints a JSON list of answers (rcode,
flags, answer types, TXT values).

Runs inside the test network namespace, where the server under test listens (one process for
all the queries: starting Python in the namespace is the slow part)."""

from __future__ import annotations

import json
import sys

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def ask(server: str, port: int, name: str, rdtype: str, transport: str, recursion: bool) -> dict:
    query = dns.message.make_query(name, rdtype, use_edns=0)
    if not recursion:
        query.flags &= ~dns.flags.RD
    send = dns.query.tcp if transport == "tcp" else dns.query.udp
    answer = send(query, server, port=port, timeout=5)
    return {
        "rcode": dns.rcode.to_text(answer.rcode()),
        "flags": dns.flags.to_text(answer.flags).split(),
        "types": [dns.rdatatype.to_text(rr.rdtype) for rr in answer.answer],
        "txt": sorted(b"".join(r.strings).decode() for rr in answer.answer if rr.rdtype == dns.rdatatype.TXT
                      for r in rr),
    }


if __name__ == "__main__":
    server, port, queries = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps([ask(server, port, *q) for q in queries]))
