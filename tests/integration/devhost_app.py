"""A small FunctionApp exercising every trigger kind the dev host must drive (test-only)."""

from __future__ import annotations

import json
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

received: list[dict[str, object]] = []
timer_runs: list[bool] = []
lock = threading.Lock()


@app.queue_trigger(arg_name="msg", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
def consume(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode()
    with lock:
        received.append({"body": body, "dequeue_count": msg.dequeue_count, "id": msg.id})
    if "explode" in body:
        raise RuntimeError("this message always fails")
    if "slow" in body:
        time.sleep(float(json.loads(body)["slow"]))


@app.timer_trigger(schedule="%TEST_SCHEDULE%", arg_name="timer", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    with lock:
        timer_runs.append(timer.past_due)


@app.route(route="orders/{order_id}/lines/{line:int}", methods=["GET", "POST"])
@app.queue_output(arg_name="out", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
def order_line(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
    if req.method == "POST":
        out.set(req.get_body().decode())
    payload = {
        "order": req.route_params["order_id"],
        "line": req.route_params["line"],
        "q": req.params.get("q"),
    }
    return func.HttpResponse(json.dumps(payload), status_code=200, mimetype="application/json")


@app.route(route="open", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def open_route(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("hello", mimetype="text/plain")


def _echo(req: func.HttpRequest, function: str) -> func.HttpResponse:
    payload = {"function": function, "route_params": dict(req.route_params)}
    return func.HttpResponse(json.dumps(payload), mimetype="application/json")


# Three functions whose routes overlap: the Functions host tries routes in function-name order, not
# the most specific first, so `a_files_index` wins over the catch-all and `z_files_latest` never runs.
@app.route(route="files/{*rest}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def files_catch_all(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req, "files_catch_all")


@app.route(route="files/index", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def a_files_index(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req, "a_files_index")


@app.route(route="files/latest", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def z_files_latest(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req, "z_files_latest")
