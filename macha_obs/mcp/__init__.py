"""The MCP server: a person's assistant questions the sidecar, and acts only through its
policy (DESIGN.md invariant 15).

    facts.py      the read-only questions: status, incidents and their chain, the queue,
                  findings, a recorded unit's state and journal, explain_policy, learned
    desk.py       the changing calls: propose (through remediate/), approve and reject
                  (only once a person confirmed), each audited with its door
    untrusted.py  log, alert and model text as a client gets it: redacted, marked
    server.py     the SDK's FastMCP: typed, annotated tools, resources, a prompt
    http.py       /mcp on the daemon's listener: token, Host/Origin, the ASGI bridge
    stats.py      macha_mcp_requests_total's counts by tool and result
"""
