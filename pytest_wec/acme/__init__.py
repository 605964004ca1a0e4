"""An asyncio ACME (RFC 8555) client built for load: cheap per request, fully observed.

::

    network = AcmeNetwork(url, make_transport(insecure=True))
    acme = network.client("newAccount", chain_id, observer)
    account = await acme.new_account(AccountKey.generate("ES256"))
    order = await acme.new_order(account, ["example.com"])

:class:`AcmeNetwork` (directory, nonces, transport) is shared by every chain of
a worker; :class:`AcmeClient` is a per-chain view whose every HTTP exchange
becomes a :class:`~pytest_wec.wire.results.RequestResult`. Errors form one
hierarchy under :class:`AcmeError` (see ``_errors``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._ari import RenewalInfo, cert_id
from ._client import AcmeClient
from ._csr import (
    CERT_KEY_KINDS,
    cert_key_from_pem,
    cert_key_to_pem,
    generate_cert_key,
    make_csr,
)
from ._errors import (
    AcmeAuthorizationEnded,
    AcmeBodyTooLarge,
    AcmeConnectError,
    AcmeError,
    AcmeHttpError,
    AcmeNotSupported,
    AcmePollTimeout,
    AcmeProblem,
    AcmeProtocolError,
    AcmeStatusError,
    AcmeTimeout,
    AcmeTransportError,
    AcmeUnexpectedStatus,
)
from ._fakeca import FakeCA
from ._httptools import HttptoolsTransport
from ._jws import (
    AccountKey,
    JwsSigner,
    b64url,
    b64url_decode,
    dns01_txt_value,
    external_account_binding,
    jwk_public_key,
    key_authorization,
    key_change_jws,
    sign_jws,
    tls_alpn01_digest,
    verify_signature,
)
from ._messages import (
    Account,
    Authorization,
    Certificate,
    Challenge,
    Directory,
    Identifier,
    IdentifierLike,
    Order,
)
from ._network import AcmeNetwork
from ._nonces import NoncePool
from ._polling import check_authorization_status, check_order_status
from ._transport import (
    DEFAULT_MAX_BODY,
    TRANSPORT_NAMES,
    USER_AGENT,
    Headers,
    MockHandler,
    MockTransport,
    Request,
    Response,
    Transport,
    make_ssl_context,
    make_transport,
)

__all__ = [
    "CERT_KEY_KINDS",
    "DEFAULT_MAX_BODY",
    "TRANSPORT_NAMES",
    "USER_AGENT",
    "Account",
    "AccountKey",
    "AcmeAuthorizationEnded",
    "AcmeBodyTooLarge",
    "AcmeClient",
    "AcmeConnectError",
    "AcmeError",
    "AcmeHttpError",
    "AcmeNetwork",
    "AcmeNotSupported",
    "AcmePollTimeout",
    "AcmeProblem",
    "AcmeProtocolError",
    "AcmeStatusError",
    "AcmeTimeout",
    "AcmeTransportError",
    "AcmeUnexpectedStatus",
    "AiohttpTransport",
    "Authorization",
    "Certificate",
    "Challenge",
    "Directory",
    "FakeCA",
    "Headers",
    "HttptoolsTransport",
    "HttpxTransport",
    "Identifier",
    "IdentifierLike",
    "JwsSigner",
    "MockHandler",
    "MockTransport",
    "NoncePool",
    "Order",
    "RenewalInfo",
    "Request",
    "Response",
    "Transport",
    "b64url",
    "b64url_decode",
    "cert_id",
    "cert_key_from_pem",
    "cert_key_to_pem",
    "check_authorization_status",
    "check_order_status",
    "dns01_txt_value",
    "external_account_binding",
    "generate_cert_key",
    "josepy_sign",
    "jwk_public_key",
    "key_authorization",
    "key_change_jws",
    "make_csr",
    "make_ssl_context",
    "make_transport",
    "sign_jws",
    "tls_alpn01_digest",
    "verify_signature",
]

if TYPE_CHECKING:
    from ._aiohttp import AiohttpTransport
    from ._httpx import HttpxTransport
    from ._jws_josepy import josepy_sign

#: imported on first use: the transports a worker's settings do not name
#: (``--wec-transport``; aiohttp alone costs more import time than the rest of this package)
#: and josepy's signer, the reference the tests and benches compare ours with
_LAZY = {"AiohttpTransport": "._aiohttp", "HttpxTransport": "._httpx",
         "josepy_sign": "._jws_josepy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
