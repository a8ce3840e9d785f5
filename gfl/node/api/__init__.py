"""The node's control API: JSON over HTTP on 127.0.0.1:9434, bearer token from DATADIR/api.token.

- `gfl.node.api.app`: `Endpoint`, `build_app` (routes + auth + errors + OpenAPI), `ApiError`;
- `gfl.node.api.core`: the node's own endpoints (status, peers, shutdown, events);
- `gfl.node.api.server`: serving the app inside the node's trio loop (hypercorn);
- `gfl_console.client`: `NodeClient` / `AsyncNodeClient` for the CLI, scripts and the console.

Submodules are imported explicitly so that a client does not pull in the server.
"""
