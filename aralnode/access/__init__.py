"""Who may call, and how much: transport security (TLS, mTLS, the mesh CA), caller
identity (JWT bearer tokens, OAuth 2.0 resource-server metadata, API keys),
authorization (roles to scopes, delegation) and admission (rate limits, circuit
breakers).

Door-neutral: the doors (``transport``, ``bridge``, ``mesh``) use these pieces,
and the pipeline's stages (``aralnode.service.stages``) apply them to every call
alike.
"""
