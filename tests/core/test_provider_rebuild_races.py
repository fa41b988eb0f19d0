"""A config reload racing a provider's first build: the provider in use afterwards is built from
the new config.

The local stack's scheduler threads (every layout: its passes run in the process whose main
loop re-reads the config, `make run`'s edits) build a pool's provider on first use while another
thread may switch the config (``Services.use_config``). A build that began under the old config
and ended after the switch was kept for good: the passes went on cloning on the old vCenter (or
with the dummy's old times) until the provider block changed again."""

from __future__ import annotations

import threading
from typing import Any

import redis

from chalicelib.auth.secrets import SecretResolver
from chalicelib.config import build
from chalicelib.providers.base import Provider
from chalicelib.providers.vsphere.config import vsphere_settings
from chalicelib.providers.vsphere.provider import VSphereProvider
from chalicelib.services import Services

POOLS = [{"name": "alpha", "size": 1, "provider": "vc", "template": "templates/alpha"}]


def config_with_server(server: str) -> Any:
    return build({"providers": {"vc": {"provider_class": "vsphere", "server": server, "username": "u",
                                       "password": "hunter2-vc"}},
                  "pools": POOLS})


class SlowResolver(SecretResolver):
    """Secrets fetched slowly (AWS answering late): the first fetch waits until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.fetching = threading.Event()
        self.released = threading.Event()

    def resolve(self, value: Any, *, force_fetch: bool = False) -> str | None:
        if not self.fetching.is_set():
            self.fetching.set()
            assert self.released.wait(30), "never released"
        return super().resolve(value, force_fetch=force_fetch)


def test_a_provider_built_while_the_config_changed_is_built_again_from_the_new_one(
        redis_client: redis.Redis) -> None:
    resolver = SlowResolver()
    services = Services(config_with_server("old-vc.example.com"), redis_client, secrets=resolver)
    built: list[Provider] = []
    first = threading.Thread(target=lambda: built.append(services.provider("vc")))
    first.start()
    assert resolver.fetching.wait(30)
    services.use_config(config_with_server("new-vc.example.com"))  # the edit, read by another thread
    resolver.released.set()
    first.join(30)
    assert len(built) == 1
    provider = services.provider("vc")
    assert isinstance(provider, VSphereProvider)
    assert vsphere_settings(provider.config.settings).server == "new-vc.example.com"
