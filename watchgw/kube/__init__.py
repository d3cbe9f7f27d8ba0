"""The upstream side: everything that speaks to the control plane (URLs, credentials, client, informer)."""
