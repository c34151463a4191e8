"""The desk client benchmarks/api_load.py runs 200 of: a signed-in viewer polling what a
console shows. Not run by itself (locust imports it; the token and account come by env)."""

from __future__ import annotations

import os

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

V1 = "/api/v1"


class DeskClient(FastHttpUser):
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        # FastHttpSession's header for every request (the load generator shares the server's
        # two cores: geventhttpclient costs it far less CPU than requests).
        self.client.auth_header = f"Bearer {os.environ['BENCH_API_TOKEN']}"
        self.account = os.environ["BENCH_API_ACCOUNT"]
        self.strategy = os.environ["BENCH_API_STRATEGY"]
        self.signal_id = os.environ["BENCH_API_SIGNAL"]

    @task(3)
    def signals(self) -> None:
        self.client.get(f"{V1}/signals", params={"limit": 50}, name=f"{V1}/signals")

    @task(3)
    def orders(self) -> None:
        self.client.get(f"{V1}/orders", params={"limit": 50}, name=f"{V1}/orders")

    @task(3)
    def fills(self) -> None:
        self.client.get(f"{V1}/accounts/{self.account}/fills", params={"limit": 50},
                        name=f"{V1}/accounts/{{account_id}}/fills")

    @task(2)
    def positions(self) -> None:
        self.client.get(f"{V1}/accounts/{self.account}/positions",
                        name=f"{V1}/accounts/{{account_id}}/positions")

    @task(2)
    def cash(self) -> None:
        self.client.get(f"{V1}/accounts/{self.account}/cash",
                        name=f"{V1}/accounts/{{account_id}}/cash")

    @task(2)
    def kill_switch(self) -> None:
        self.client.get(f"{V1}/accounts/{self.account}/kill-switch",
                        name=f"{V1}/accounts/{{account_id}}/kill-switch")

    @task(1)
    def one_signal(self) -> None:
        self.client.get(f"{V1}/signals/{self.signal_id}", name=f"{V1}/signals/{{signal_id}}")

    @task(1)
    def strategies(self) -> None:
        self.client.get(f"{V1}/strategies", name=f"{V1}/strategies")

    @task(2)
    def health(self) -> None:
        self.client.get("/health", name="/health")
