"""The partitions users see: sessions, and for each decoding configuration the sessions
it decodes. Both are dynamic: the ``catalog_sync`` sensor adds a session when the catalog
has it, and adds it to a decoding once the session has that decoding's groups and an
interval it decodes, so every partition shown can be materialized. A decoding partition
decodes every interval its configuration selects in the session; intervals are listed,
by name, in its materializations and in the catalog."""

import functools

import dagster as dg

sessions_partitions = dg.DynamicPartitionsDefinition(name="sessions")


@functools.cache
def decoding_partitions(decoding_name: str) -> dg.DynamicPartitionsDefinition:
    """The sessions the decoding configuration ``decoding_name`` decodes."""
    return dg.DynamicPartitionsDefinition(name=f"decoding_{decoding_name}")
