"""Sessions and decoding intervals are dynamic: they are added as NWB files arrive."""

import dagster as dg

sessions_partitions = dg.DynamicPartitionsDefinition(name="sessions")
decoding_intervals_partitions = dg.DynamicPartitionsDefinition(name="decoding_intervals")
decoding_partitions = dg.MultiPartitionsDefinition(
    {"session": sessions_partitions, "interval": decoding_intervals_partitions}
)
