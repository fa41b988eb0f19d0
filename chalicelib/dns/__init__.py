"""DNS plugins: the A records of pool VMs, as vmpooler 3.x's ``dns_configs`` / ``dns_plugin``.

The manager talks to a plugin only through ``base.DnsPlugin``; ``registry.build_dns_plugin``
makes the one a ``:dns_configs:`` entry names. Shipped: ``route53`` (boto3) and ``dynamic-dns``
(RFC 2136 updates with dnspython; without a ``server`` it manages nothing, as in vmpooler, where
the VMs register themselves).
"""
