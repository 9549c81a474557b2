"""A Triton client for tests/test_serving.py, run in the serving environment (tritonclient needs protobuf < 7):
``python triton_client.py MODE JSON``, MODE one of metadata, infer, load, bad, config; prints one JSON document."""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.serving.client import triton_inputs

TIMEOUT_S = 20


def _http(args: dict) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(args["http"], connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)


def metadata(args: dict) -> dict:
    client = _http(args)
    return {"metadata": client.get_model_metadata(args["model"]), "config": client.get_model_config(args["model"])}


def infer(args: dict) -> dict:
    """The outputs over HTTP and gRPC of the inputs in args["input"], written to args["out"]-http/-grpc.npz."""
    arrays = dict(np.load(args["input"]))
    http = _http(args).infer(args["model"], triton_inputs(httpclient, arrays))
    grpc = grpcclient.InferenceServerClient(args["grpc"]).infer(args["model"], triton_inputs(grpcclient, arrays),
                                                                client_timeout=TIMEOUT_S)
    for kind, result in (("http", http), ("grpc", grpc)):
        np.savez(f"{args['out']}-{kind}.npz", **{n: result.as_numpy(n) for n in args["outputs"]})
    return {"ok": True}


def load(args: dict) -> dict:
    """args["clients"] threads, each sending args["requests"] requests of random batch sizes (rows of the
    input, output compared with the expected rows); counts of correct, wrong and failed requests, and Triton's
    statistics. With args["until_failure"], each client instead sends until its first failed request (at most
    args["requests"]), and the file args["ready"] is written after the first correct answer."""
    arrays, expected = dict(np.load(args["input"])), dict(np.load(args["expected"]))
    rows = next(iter(arrays.values())).shape[0]
    counts = {"correct": 0, "wrong": 0, "failed": 0, "errors": []}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng, connection = random.Random(seed), _http(args)
        for _ in range(args["requests"]):
            start = rng.randrange(rows)
            stop = min(rows, start + rng.choice([1, 1, 2, 3, 4]))
            try:
                result = connection.infer(args["model"], triton_inputs(httpclient, {k: v[start:stop] for k, v in arrays.items()}))
                good = all(np.allclose(result.as_numpy(n), expected[n][start:stop], rtol=1e-5, atol=1e-5)
                           for n in expected)
                kind = "correct" if good else "wrong"
            except Exception as exc:  # counted: the test asserts on it
                kind = "failed"
                with lock:
                    counts["errors"].append(str(exc)[:200])
            with lock:
                counts[kind] += 1
                if kind == "correct" and counts["correct"] == 1 and args.get("ready"):
                    Path(args["ready"]).write_text("serving")
            if kind == "failed" and args.get("until_failure"):
                return

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(args["clients"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts["errors"] = counts["errors"][:5]
    try:
        counts.update(_metrics(args))
    except Exception as exc:  # the server may be gone (the kill test)
        counts["statistics_error"] = str(exc)[:200]
    return counts


def _metrics(args: dict) -> dict[str, float]:
    """Triton's inference and execution counts of the model, from its Prometheus metrics (PyTriton restricts the
    statistics API to its own token)."""
    text = urllib.request.urlopen(f"http://{args['metrics']}/metrics", timeout=TIMEOUT_S).read().decode()
    found = {}
    for key, metric in (("inference_count", "nv_inference_count"), ("execution_count", "nv_inference_exec_count")):
        match = re.search(rf'^{metric}{{[^}}]*model="{re.escape(args["model"])}"[^}}]*}} (\S+)$', text, re.M)
        found[key] = float(match.group(1))
    return found


def bad(args: dict) -> dict:
    """Each bad request of args["requests"] ({"inputs": {name: [dtype, shape, fill]}}): the server's error
    message, or "ACCEPTED" if it answered; then whether a good request (args["input"]) still succeeds."""
    client, answers = _http(args), []
    for request in args["requests"]:
        arrays = {name: np.full(shape, fill, dtype) for name, (dtype, shape, fill) in request["inputs"].items()}
        try:
            client.infer(request.get("model", args["model"]), triton_inputs(httpclient, arrays))
            answers.append("ACCEPTED")
        except InferenceServerException as exc:
            answers.append(exc.message())
    good = dict(np.load(args["input"]))
    client.infer(args["model"], triton_inputs(httpclient, good))
    return {"answers": answers, "still_serving": True}


def mixed(args: dict) -> dict:
    """args["clients"] clients at once, each sending args["requests"] requests; client 0's requests are bad
    (args["bad"]: {name: [dtype, shape, fill]}), the others' good (rows of args["input"]). Counts of good
    requests answered, good requests failed, and bad requests refused or accepted."""
    good = dict(np.load(args["input"]))
    bad_arrays = {name: np.full(shape, fill, dtype) for name, (dtype, shape, fill) in args["bad"].items()}
    counts = {"good_ok": 0, "good_failed": 0, "bad_refused": 0, "bad_accepted": 0, "errors": []}
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = _http(args)
        for _ in range(args["requests"]):
            arrays = bad_arrays if index == 0 else good
            try:
                connection.infer(args["model"], triton_inputs(httpclient, arrays))
                kind = "bad_accepted" if index == 0 else "good_ok"
            except InferenceServerException as exc:
                kind = "bad_refused" if index == 0 else "good_failed"
                if index:
                    with lock:
                        counts["errors"].append(exc.message()[-200:])
            with lock:
                counts[kind] += 1
                if kind == "correct" and counts["correct"] == 1 and args.get("ready"):
                    Path(args["ready"]).write_text("serving")
            if kind == "failed" and args.get("until_failure"):
                return

    threads = [threading.Thread(target=client, args=(index,)) for index in range(args["clients"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts["errors"] = counts["errors"][:3]
    return counts


def config(args: dict) -> dict:
    """Each config.pbtxt parsed with Triton's schema (ModelConfig, protobuf text format), as a dict."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    return {path: json_format.MessageToDict(text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig()))
            for path in args["paths"]}


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]](json.loads(sys.argv[2]))))
