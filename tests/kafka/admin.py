"""Asks the cluster what an admin tool asks, with librdkafka's AdminClient (confluent-kafka):
the consumer groups, one group's description, and a topic's configs. Prints one JSON object.

Usage: admin.py BROKERS GROUP TOPIC
"""
import json
import sys

from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

brokers, group, topic = sys.argv[1:4]
admin = AdminClient({"bootstrap.servers": brokers})

listed = admin.list_consumer_groups(request_timeout=30).result()
described = admin.describe_consumer_groups([group], request_timeout=30)[group].result()
configs = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=30)
entries = list(configs.values())[0].result()

print(json.dumps({
    "groups": sorted(g.group_id for g in listed.valid),
    "state": ConsumerGroupState(described.state).name,
    "assignor": described.partition_assignor,
    "members": [
        {
            "id": m.member_id,
            "client": m.client_id,
            "host": m.host,
            "partitions": sorted(tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic),
        }
        for m in described.members
    ],
    "configs": {name: e.value for name, e in entries.items()},
}))
