"""Components under every multiprocessing start method: fork, forkserver and spawn."""

import multiprocessing
import queue
import threading

import pytest

from hermes_lite import Client, Component, InvalidConfigurationException, PostgresNotificationListener

START_METHODS = ["fork", "forkserver", "spawn"]


class ForwardingProcessor(Component):
    """Sends each notification's payload to ``received``."""

    def __init__(self, received):
        super().__init__()
        self.received = received

    def execute(self, batch):
        for payload in batch.payloads:
            self.received.put(payload)


class UnpicklableProcessor(Component):
    def __init__(self):
        super().__init__()
        self.callback = lambda item: item


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_client_runs_under_start_method(postgres_cluster, implementation, start_method):
    context = multiprocessing.get_context(start_method)
    received = context.Queue()
    listener = PostgresNotificationListener(postgres_cluster.dsn, "start_method_ch", implementation=implementation)
    processor = ForwardingProcessor(received)
    listener.mp_context = context
    processor.mp_context = context
    client = Client(postgres_cluster.dsn)
    client.add_listener(listener)
    client.add_processor(processor)
    supervisor = threading.Thread(target=client.start)
    supervisor.start()
    try:
        # Spawned interpreters take a while to start: send until one notification arrives.
        payload = None
        for _ in range(600):
            postgres_cluster.execute("SELECT pg_notify('start_method_ch', 'ping')")
            try:
                payload = received.get(timeout=0.1)
                break
            except queue.Empty:
                continue
    finally:
        client.stop()
        supervisor.join(60)

    assert payload == "ping"
    assert not listener.is_alive()
    assert not processor.is_alive()


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_unpicklable_attribute_named_at_start(start_method):
    processor = UnpicklableProcessor()
    processor.mp_context = multiprocessing.get_context(start_method)

    with pytest.raises(InvalidConfigurationException, match=r"UnpicklableProcessor\.callback cannot be pickled"):
        processor.start()

    assert not processor.is_alive()
