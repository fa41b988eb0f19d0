"""The API tests' config: three dummy pools with aliases, domains and planted passwords."""

from __future__ import annotations

PROVIDER_PASSWORD = "provider-secret-7Qz"
REDIS_PASSWORD = "redis-secret-4Kw"
LDAP_PASSWORD = "ldap-secret-9Xv"

CONFIG_YAML = f"""
:config:
  domain: example.com
  vm_lifetime: 2
  max_lifetime_upper_limit: 168
  allowed_tags: [project, owner, created_by, url]
:redis:
  server: 127.0.0.1
  password: {REDIS_PASSWORD}
:providers:
  :dummy:
    provider_class: dummy
    username: admin
    password: {PROVIDER_PASSWORD}
    createvm_max_time: 0
    boot_time: 0
:dns_configs:
  :three:
    dns_class: dynamic
    domain: three.example.com
:tagfilter:
  url: '(.*)\\/'
:pools:
  - name: pool1
    alias: [linux]
    template: templates/pool1
    size: 2
    provider: dummy
    domain: one.example.com
  - name: pool2
    alias: [linux, two]
    template: templates/pool2
    size: 2
    provider: dummy
  - name: pool3
    template: templates/pool3
    size: 1
    provider: dummy
    dns_plugin: three
"""
"""pool1 has its own domain, pool2 takes the global one, pool3 its dns_config's; ``linux``
aliases pool1 and pool2. Passwords are planted so tests can prove no answer shows them."""
