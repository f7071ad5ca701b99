"""Seed 003's producer, as that pipeline's generate_logs.py creates and uses it (kafka-python).

Usage: seed003_producer.py BROKER TOPIC COUNT
"""
import json
import random
import sys
import uuid

from kafka import KafkaProducer

KAFKA_BROKER, TOPIC, COUNT = sys.argv[1], sys.argv[2], int(sys.argv[3])

producer = KafkaProducer(
    bootstrap_servers=[KAFKA_BROKER],
    value_serializer=lambda v: json.dumps(v).encode('utf-8')
)

buyers = ["John Doe", "Jane Smith", "Alice Johnson", "Michael Brown", "Emily Davis"]
car_brands_models = {"Toyota": ["Camry", "Corolla"], "Ford": ["F-150", "Mustang"]}
colors = ["Red", "Blue", "Black"]
countries = ["USA", "Canada", "Germany"]
branches = ["New York", "Toronto", "Berlin"]
years = [2015, 2016, 2017, 2018]


def generate_car_transaction():
    brand = random.choice(list(car_brands_models.keys()))
    return {
        "transaction_id": str(uuid.uuid4()),
        "buyer_id": str(uuid.uuid4()),
        "buyer_name": random.choice(buyers),
        "car_brand": brand,
        "car_model": random.choice(car_brands_models[brand]),
        "year": random.choice(years),
        "color": random.choice(colors),
        "country": random.choice(countries),
        "branch": random.choice(branches),
        "transaction_price": round(random.uniform(20000, 80000), 2)
    }


total = 0.0
for _ in range(COUNT):
    t = generate_car_transaction()
    total += t["transaction_price"]
    producer.send(TOPIC, t)
producer.flush()
print(f"sent {COUNT} total {total:.2f}", flush=True)
