"""The desk API: a versioned REST service (``/api/v1``) over the ledger, the research outputs
and the controls, with sign-in, roles and audit (issue 16). ``python -m api`` serves it;
``python -m api create-admin --username X`` creates the first administrator."""
