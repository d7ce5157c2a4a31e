"""``Tallystick``: the client object (wallet, store, chain, HTTP) and the official-SDK bridge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from tallystick.protocol import ChannelStatus, model_id

from ._audit import AuditCase, AuditReport, Reference, audit
from ._auditor import DEFAULT_AUDIT_FRACTION, AuditLog, Auditor, AuditRecord, rank_by_audits
from ._billing import MAX_UNSEEN_TOKENS, Biller
from ._chain import Chain, Offer
from ._channels import Channels
from ._chat import Chat, Completions
from ._discovery import find_offers
from ._errors import ChannelNotFound, ClientError, WalletError
from ._locks import LockWait
from ._node import NodeClient
from ._store import Store
from ._tokenizers import TokenizerCache
from ._transport import TallyTransport
from ._types import OpenChannel
from ._verify import DEFAULT_TOLERANCE, Tolerance
from ._wallet import Wallet

__all__ = ["Tallystick"]

DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # CPU inference can take minutes


class Tallystick:
    """A client: pays providers per token, only for bills it has verified.

    ``chain`` is needed for discovery and channel operations, not for chat on an open channel;
    ``transport`` is the httpx transport to the nodes (a ``MockTransport`` in unit tests).
    ``wallet`` may be None to chat on channels that have a session key in the store (the
    wallet's key then stays cold); ``max_unseen_tokens`` bounds what an interrupted stream may
    be billed past the text it delivered, ``tolerance`` how many ids a bill may carry beyond
    the canonical encoding of its text (docs/protocol.md §6). A request waits while another
    one, of this process or another one on the same store, uses its channel;
    ``on_lock_wait(channel_id, holder)`` is told once when it starts waiting. ``audit_weights``
    (the listed weights file) turns on background audits of ``audit_fraction`` of the bills
    (default 5%, §10.4); a provider with a failed audit is ranked out of discovery.
    """

    def __init__(
        self,
        wallet: Wallet | None,
        store: Store | str | Path,
        *,
        chain: Chain | None = None,
        transport: httpx.BaseTransport | None = None,
        tokenizer_dir: str | Path | None = None,
        post_receipts: bool = True,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_unseen_tokens: int = MAX_UNSEEN_TOKENS,
        tolerance: Tolerance = DEFAULT_TOLERANCE,
        on_lock_wait: LockWait | None = None,
        audit_weights: str | Path | None = None,
        audit_fraction: float | None = None,
    ) -> None:
        self.wallet = wallet
        self.store = store if isinstance(store, Store) else Store(store)
        self._chain = chain
        self._transport = transport or httpx.HTTPTransport(retries=1)
        self._timeout = timeout
        self.http = httpx.Client(transport=self._transport, timeout=timeout)
        cache_dir = tokenizer_dir or self.store.path.parent / "tokenizers"
        self.biller = Biller(
            wallet,
            self.store,
            TokenizerCache(cache_dir),
            self.http,
            post_receipts=post_receipts,
            max_unseen_tokens=max_unseen_tokens,
            tolerance=tolerance,
            chain=chain,
            on_lock_wait=on_lock_wait,
        )
        # Audits (§10.4): always logged; run on a fraction of bills when we hold the weights.
        self.audits = AuditLog(self.store.path.with_suffix(".audits.db"))
        fraction = audit_fraction
        if fraction is None:
            fraction = DEFAULT_AUDIT_FRACTION if audit_weights is not None else 0.0
        self.auditor = Auditor(self.audits, audit_weights, fraction=fraction)
        self.biller.auditor = self.auditor
        self.chat = Chat(self)
        self.completions = Completions(self)
        self.channels = Channels(self)
        self._clients: dict[bytes, httpx.Client] = {}

    def __repr__(self) -> str:
        who = self.wallet.address if self.wallet else "no wallet"
        return f"Tallystick({who}, store={self.store.path})"

    @property
    def account(self) -> LocalAccount:
        """The wallet's signer; on-chain operations need it."""
        if self.wallet is None:
            raise WalletError("this operation needs the wallet's key: pass --key or --keystore")
        return self.wallet.account

    @property
    def chain(self) -> Chain:
        if self._chain is None:
            raise ClientError("this operation needs the chain: pass chain=Chain.connect(...)")
        return self._chain

    def providers(
        self,
        model: str | None = None,
        max_input_price: int | None = None,
        max_output_price: int | None = None,
    ) -> list[Offer]:
        """Active on-chain listings of providers without a failed audit, cheapest first."""
        offers = find_offers(self.chain, model, max_input_price, max_output_price)
        published = self.chain.published_audits({o.provider for o in offers})
        return rank_by_audits(offers, self.audits, published)

    def publish_audit(self, report: AuditReport, *, uri: str, report_bytes: bytes) -> Any:
        """Publish a failed audit on-chain (an ``AuditReported`` event: its hash and ``uri``)."""
        if report.verdict != "fail":
            raise ClientError(f"only a failed audit is published, not a {report.verdict!r} one")
        case = report.case
        return self.chain.registry.report_audit(
            self.account, case.provider, model_id(case.model), keccak(report_bytes), uri
        )

    def audit(
        self, evidence: AuditCase | AuditReport | dict[str, Any], weights: str | Path | None = None
    ) -> AuditReport:
        """Audit one case (or re-check a report) now, with ``weights`` or ``audit_weights``."""
        if isinstance(evidence, dict):
            obj = evidence.get("case", evidence)
            evidence = AuditCase.from_json(obj)
        case = evidence.case if isinstance(evidence, AuditReport) else evidence
        reference = Reference.load(weights) if weights is not None else self.auditor.reference()
        return audit(case, reference)

    def audit_record(self, provider: str) -> AuditRecord:
        """How many of ``provider``'s audits passed and failed, as this client saw them."""
        return self.audits.record(provider)

    def node(self, endpoint: str) -> NodeClient:
        return NodeClient(endpoint, self.http)

    def channel(self, channel: bytes | str | OpenChannel) -> OpenChannel:
        """A channel of the store by id (bytes, ``0x`` hex, ``OpenChannel``) or a unique prefix.

        A prefix (``0x4c53e4``, at least 4 hex digits) must match exactly one stored channel:
        ``ChannelNotFound`` names the candidates when it matches several, or says none did.
        """
        if isinstance(channel, str):
            text = channel.lower().removeprefix("0x")
            if len(text) < 64 and all(c in "0123456789abcdef" for c in text):
                return self._channel_by_prefix(channel, text)
        return self.store.channel(_channel_id(channel))

    def _channel_by_prefix(self, given: str, prefix: str) -> OpenChannel:
        if len(prefix) < 4:
            raise ChannelNotFound(f"{given!r}: give at least 4 hex digits of the channel id")
        found = [c for c in self.store.channels() if c.channel_id.hex().startswith(prefix)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ChannelNotFound(f"no channel in the store {self.store.path} starts with {given}")
        ids = ", ".join(c.hex_id for c in found)
        raise ChannelNotFound(f"{given} is ambiguous: it starts {len(found)} channels ({ids})")

    def channel_for(
        self, model: str, channel: bytes | str | OpenChannel | None = None
    ) -> OpenChannel:
        """``channel`` if given, else the newest open channel for ``model``."""
        if channel is not None:
            info = self.channel(channel)
        else:
            open_ = self.store.channels(status=ChannelStatus.OPEN, model=model)
            if not open_:
                raise ChannelNotFound(
                    f"no open channel for model {model!r}: open one first "
                    "(tallystick channel open --model ...)"
                )
            info = open_[0]
        if info.status != ChannelStatus.OPEN:
            raise ChannelNotFound(f"channel {info.hex_id} is {info.status}, not open")
        return info

    def http_client(self, channel: OpenChannel) -> httpx.Client:
        """An httpx client whose transport verifies and countersigns on ``channel``."""
        if channel.channel_id not in self._clients:
            transport = TallyTransport(self.biller, channel, self._transport)
            self._clients[channel.channel_id] = httpx.Client(
                transport=transport, timeout=self._timeout
            )
        return self._clients[channel.channel_id]

    def openai(
        self,
        channel: bytes | str | OpenChannel | None = None,
        *,
        model: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """An official ``openai.OpenAI`` client on ``channel`` that only pays verified bills."""
        import openai

        if channel is None and model is None:
            raise ClientError("pass a channel or a model")
        info = self.channel_for(model or "", channel)
        kwargs.setdefault("max_retries", 0)  # a retried completion would be served twice
        return openai.OpenAI(
            base_url=info.endpoint.rstrip("/") + "/v1",
            # Not a credential: the transport signs every request (§4.3) in its place.
            api_key=f"tally-channel-{info.hex_id}",
            http_client=self.http_client(info),  # type: ignore[arg-type]
            **kwargs,
        )

    def bill(self, channel: bytes | str | OpenChannel) -> list[Any]:
        """Every verified request of ``channel``: seq, counts, cost, signed record."""
        return self.store.bill(self.channel(channel).channel_id)

    def close(self) -> None:
        self.auditor.close()
        self.audits.close()
        for client in self._clients.values():
            client.close()
        self.http.close()
        self.store.close()

    def __enter__(self) -> Tallystick:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _channel_id(channel: bytes | str | OpenChannel) -> bytes:
    """Accept a channel as bytes, ``0x`` hex or ``OpenChannel``."""
    if isinstance(channel, OpenChannel):
        return channel.channel_id
    if isinstance(channel, bytes):
        return channel
    text = channel[2:] if channel.lower().startswith("0x") else channel
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ChannelNotFound(f"{channel!r} is not a channel id (32 bytes of hex)")
    return raw
