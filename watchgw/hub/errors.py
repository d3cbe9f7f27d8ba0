"""Refusals of the hub, each with the HTTP status and error code of PROTOCOL.md section 3."""

from __future__ import annotations


class HubError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(HubError):
    status, code = 400, "invalid_request"


class Forbidden(HubError):
    status, code = 403, "forbidden"


class UnknownClient(HubError):
    status, code = 404, "unknown_client"


class ClientIdInUse(HubError):
    status, code = 409, "client_id_in_use"


class TooManySubscriptions(HubError):
    status, code = 429, "too_many_subscriptions"


class TooManyChannels(HubError):
    status, code = 429, "too_many_channels"


class TooManyClients(HubError):
    status, code = 503, "too_many_clients"


class Draining(HubError):
    status, code = 503, "shutting_down"


class TooManyClientsForIdentity(HubError):
    """One identity (without authentication: one client address) holds ``max_clients_per_identity``
    sessions; everyone else is still served."""

    status, code = 429, "too_many_clients_for_identity"


class TooManySubscriptionsForIdentity(HubError):
    status, code = 429, "too_many_subscriptions_for_identity"


class TooManyChannelsForIdentity(HubError):
    status, code = 429, "too_many_channels_for_identity"
