"""Scale-out on Ray Serve: a Ferry front door in front of engine replicas (``app``), routed by
conversation and cached prefix (``routing``, ``router``), launched by ``ferry serve --ray``
(``launch``). Imported by nothing but the CLI and Ray: plain ``ferry serve`` never imports Ray."""
