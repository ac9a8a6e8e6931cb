"""A stand-in for AppWorld's environment server (``appworld serve environment``) for tests.

It speaks the protocol of ``appworld/serve/environment.py`` (appworld 0.1.3.post1, FastAPI
0.110 with pydantic 1) byte for byte where the client can tell: JSON bodies,
``200 {"output": ...}``, a plain-text ``500 Internal Server Error`` for a wrong or
uninitialised task id, a ``422`` with FastAPI's pydantic-1 JSON for a missing field, one
request served at a time, one task held at a time. Behind it are three small tasks on a
tiny note-taking app, a sandboxed ``exec`` of the submitted code against an ``apis``
object, and unit-test-like evaluation. ``faults`` injects delays, 5xx answers and dropped
connections; ``stop()`` and a new server on the same port make a restart.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import dataclasses
import io
import json
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable

SUPERVISOR = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com", "phone_number": "5550101"}
NOTES = [
    {"note_id": 1, "title": "pancake recipe", "content": "flour, milk, eggs"},
    {"note_id": 2, "title": "todo", "content": "call mum"},
    {"note_id": 3, "title": "soup recipe", "content": "leeks, potatoes"},
    {"note_id": 4, "title": "books", "content": "Middlemarch"},
]
SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in ("len", "range", "str", "int", "float", "bool", "list", "dict", "set", "tuple", "sorted", "sum",
                 "min", "max", "enumerate", "zip", "any", "all", "abs", "round", "isinstance", "repr", "Exception",
                 "ValueError", "KeyError", "True", "False", "None")
}


@dataclasses.dataclass
class FakeTask:
    task_id: str
    instruction: str
    answer: Any  # the right answer, or None for an action task
    # (world) -> [(requirement, passed, label)]: AppWorld's unit tests of the final state.
    tests: Callable[["World"], list[tuple[str, bool, str]]]
    difficulty: int = 1


def _notes_unchanged(world: "World", except_new: str | None = None) -> bool:
    kept = [n for n in world.notes if n["title"] != except_new]
    return kept == NOTES


def _count_tests(world: "World") -> list[tuple[str, bool, str]]:
    return [
        ("assert the notes are unchanged", _notes_unchanged(world), "no_op_pass"),
        ("assert answers match", str(world.answer).strip() == "2", "no_op_fail"),
    ]


def _create_tests(world: "World") -> list[tuple[str, bool, str]]:
    added = [n for n in world.notes if n["title"] == "groceries"]
    return [
        ("assert the other notes are unchanged", _notes_unchanged(world, except_new="groceries"), "no_op_pass"),
        ("assert one 'groceries' note with 'milk, eggs' was added",
         len(added) == 1 and added[0]["content"] == "milk, eggs", "no_op_fail"),
    ]


def _delete_tests(world: "World") -> list[tuple[str, bool, str]]:
    titles = [n["title"] for n in world.notes]
    return [
        ("assert 'todo' was deleted", "todo" not in titles, "no_op_fail"),
        ("assert 'books' was deleted", "books" not in titles, "no_op_fail"),
        ("assert the recipes are kept", titles.count("pancake recipe") + titles.count("soup recipe") == 2, "no_op_pass"),
    ]


TASKS = {
    t.task_id: t
    for t in (
        FakeTask("a1b2c3d_1", "How many of my SimpleNote notes are recipes?", 2, _count_tests),
        FakeTask("a1b2c3d_2", "Add a SimpleNote note titled 'groceries' with the content 'milk, eggs'.", None, _create_tests),
        FakeTask("b2c3d4e_1", "Delete my SimpleNote notes titled 'todo' and 'books'.", None, _delete_tests, difficulty=2),
    )
}
SPLITS = {"train": ["a1b2c3d_1", "a1b2c3d_2"], "dev": ["b2c3d4e_1"], "test_normal": ["b2c3d4e_1"]}

API_DOCS = {
    "supervisor": {
        "show_profile": ("Show your supervisor's profile information.", []),
        "complete_task": ("Mark the currently active task as complete with the given answer.",
                          [{"name": "answer", "type": "string", "required": False},
                           {"name": "status", "type": "string", "required": False}]),
    },
    "simple_note": {
        "search_notes": ("Search notes by a query on their titles.",
                         [{"name": "query", "type": "string", "required": False},
                          {"name": "page_index", "type": "integer", "required": False}]),
        "create_note": ("Create a note.", [{"name": "title", "type": "string", "required": True},
                                           {"name": "content", "type": "string", "required": False}]),
        "delete_note": ("Delete a note.", [{"name": "note_id", "type": "integer", "required": True}]),
    },
}


class _App:
    def __init__(self, **methods):
        for name, method in methods.items():
            setattr(self, name, method)


class World:
    """One initialised task: its state and the code shell's namespace."""

    def __init__(self, task: FakeTask):
        self.task = task
        self.task_id = task.task_id
        self.notes = copy.deepcopy(NOTES)
        self.answer: Any = None
        self.status: str | None = None
        self.closed = False
        self.namespace: dict[str, Any] = {"apis": self._apis()}

    def _apis(self) -> _App:
        def complete_task(answer: Any = None, status: str = "success") -> dict:
            self.answer, self.status = answer, status
            return {"message": "Marked the active task complete."}

        def search_notes(query: str = "", page_index: int = 0, page_limit: int = 5) -> list[dict]:
            found = [dict(n) for n in self.notes if query.lower() in n["title"].lower()]
            return found[page_index * page_limit : (page_index + 1) * page_limit]

        def create_note(title: str, content: str = "") -> dict:
            note_id = max([n["note_id"] for n in self.notes], default=0) + 1
            self.notes.append({"note_id": note_id, "title": title, "content": content})
            return {"message": "Note created.", "note_id": note_id}

        def delete_note(note_id: int) -> dict:
            if not any(n["note_id"] == note_id for n in self.notes):
                raise Exception(f"Response status code is 404:\n{{\"message\":\"Note with id {note_id} not found.\"}}")
            self.notes = [n for n in self.notes if n["note_id"] != note_id]
            return {"message": "Note deleted."}

        def show_app_descriptions() -> list[dict]:
            return [{"name": "api_docs", "description": "An app to search and explore API documentation."},
                    {"name": "supervisor", "description": "An app to access supervisor's personal information."},
                    {"name": "simple_note", "description": "A note-taking app to create and manage notes"}]

        def show_api_descriptions(app_name: str) -> list[str]:
            return [f"{name} : {doc[0]}" for name, doc in API_DOCS[app_name].items()]

        def show_api_doc(app_name: str, api_name: str) -> dict:
            description, parameters = API_DOCS[app_name][api_name]
            return {"app_name": app_name, "api_name": api_name, "description": description, "parameters": parameters}

        return _App(
            api_docs=_App(show_app_descriptions=show_app_descriptions, show_api_descriptions=show_api_descriptions,
                          show_api_doc=show_api_doc),
            supervisor=_App(show_profile=lambda: dict(SUPERVISOR), complete_task=complete_task),
            simple_note=_App(search_notes=search_notes, create_note=create_note, delete_note=delete_note),
        )

    def execute(self, code: str) -> str:
        """AppWorld's ``world.execute``: stdout, ``Execution successful.``, or a traceback."""
        if self.closed:
            return "Execution failed. Traceback:\n(sqlite3.ProgrammingError) Cannot operate on a closed database."
        code = code.strip()
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            return f"Execution failed. Traceback:\nSyntax error in line:\n{(e.text or '').rstrip()}\nMessage: {e.msg}"
        if not code:
            return "No code available to execute."
        for node in ast.walk(tree):
            # The sandbox: no imports and no private or dunder attributes, so nothing reaches
            # past the `apis` object (AppWorld's SafetyGuard answers in the same shape).
            if isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Attribute) and node.attr.startswith("_")
            ) or (isinstance(node, ast.Name) and node.id.startswith("__")):
                return "Execution failed. Traceback:\nUsage of the following code is not allowed: " + ast.unparse(node)[:80]
        buffer = io.StringIO()
        builtins = dict(SAFE_BUILTINS, print=lambda *a, **k: print(*a, **{**k, "file": buffer}))
        self.namespace["__builtins__"] = builtins
        try:
            exec(compile(tree, "<python-input>", "exec"), self.namespace)
        except Exception as error:
            lines = traceback.format_exception_only(type(error), error)
            return "Execution failed. Traceback:\n" + "".join(lines).rstrip()
        return buffer.getvalue() if buffer.getvalue().strip() else "Execution successful."

    def task_completed(self) -> bool:
        return self.status in ("success", "fail")

    def evaluate(self) -> dict[str, Any]:
        passes, failures = [], []
        for requirement, passed, label in self.task.tests(self):
            if passed:
                passes.append({"requirement": requirement, "label": label})
            else:
                failures.append({"requirement": requirement, "trace": f"```python\n{requirement}\n```", "label": label})
        return {"success": not failures, "difficulty": self.task.difficulty, "num_tests": len(passes) + len(failures),
                "passes": passes, "failures": failures}


POST_ENDPOINTS = ("initialize", "execute", "task_completed", "evaluate", "close", "close_all", "save_logs")


class _Error(Exception):
    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body


def _missing(body: dict, *fields: str) -> None:
    absent = [f for f in fields if f not in body]
    if absent:
        raise _Error(422, {"detail": [{"loc": ["body", f], "msg": "field required", "type": "value_error.missing"} for f in absent]})


class FakeAppWorldServer:
    """The fake server on ``127.0.0.1`` (``port=0``: an ephemeral port), served by a thread.

    ``faults``: a list of ``(endpoint, kind, value)`` consumed in order when ``endpoint`` is
    requested: ``("execute", "delay", 2.0)`` sleeps before answering, ``("execute", "block",
    event)`` answers once ``event`` is set, ``("execute", "status",
    503)`` answers a plain-text 5xx, ``("initialize", "drop", None)`` closes the connection
    without an answer. ``requests`` records ``(endpoint, body)``.
    """

    def __init__(self, port: int = 0):
        self.world: World | None = None
        self.faults: list[tuple[str, str, Any]] = []
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = (json.dumps(body, separators=(",", ":")) if content_type == "application/json" else body).encode()
                self.send_response(status)
                self.send_header("content-type", content_type if content_type != "text/plain" else "text/plain; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                endpoint = self.path.strip("/")
                for i, (name, kind, value) in enumerate(server.faults):
                    if name == endpoint.split("/")[0]:
                        del server.faults[i]
                        if kind == "delay":
                            time.sleep(value)
                        elif kind == "block":
                            value.wait(30)
                        elif kind == "status":
                            return self._send(value, "Internal Server Error" if value == 500 else "Service Unavailable", "text/plain")
                        elif kind == "drop":
                            self.close_connection = True
                            return
                        break
                try:
                    status, output = 200, server.dispatch(method, endpoint, raw)
                    body = output if method == "GET" else {"output": output}
                except _Error as error:
                    status, body = error.status, error.body
                except Exception:
                    # FastAPI turns any unhandled exception into this bare plain-text answer.
                    return self._send(500, "Internal Server Error", "text/plain")
                # FastAPI's JSONResponse: compact separators.
                self._send(status, body)

            def do_POST(self):
                self._handle("POST")

            def do_GET(self):
                self._handle("GET")

        class Server(HTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that timed out or hung up: nothing to report

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> "FakeAppWorldServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "FakeAppWorldServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the endpoints of appworld/serve/environment.py --------------------------------------

    def _world(self, task_id: str) -> World:
        if self.world is None or self.world.task_id != task_id:
            raise RuntimeError("maybe_raise_exception")  # a bare 500, as on the real server
        return self.world

    def dispatch(self, method: str, endpoint: str, raw: bytes) -> Any:
        if method == "GET":
            if endpoint == "":
                return {"message": "Welcome to AppWorld Server! Checkout /redoc or /docs for FastAPI documentation of this Server."}
            if endpoint.startswith("tasks/"):
                return _task_dict(TASKS[endpoint.split("/", 1)[1]])
            raise _Error(405, {"detail": "Method Not Allowed"}) if endpoint in POST_ENDPOINTS else _Error(404, {"detail": "Not Found"})
        handlers = {
            "initialize": (("task_id",), lambda b: self._initialize(b)),
            "execute": (("task_id", "code"), lambda b: self._world(b["task_id"]).execute(b["code"])),
            "task_completed": (("task_id",), lambda b: self._world(b["task_id"]).task_completed()),
            "evaluate": (("task_id",), lambda b: self._evaluate(b)),
            "close": (("task_id",), lambda b: self._close(b)),
            "close_all": (("task_id",), lambda b: self._close(b)),
            "save_logs": (("task_id",), lambda b: self._world(b["task_id"]) and None),
        }
        if endpoint not in handlers:
            raise _Error(404, {"detail": "Not Found"})
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise _Error(422, {"detail": [{"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error",
                                           "input": {}, "ctx": {"error": "Expecting value"}}]}) from None
        if not isinstance(body, dict):
            body = {}
        fields, handler = handlers[endpoint]
        _missing(body, *fields)
        self.requests.append((endpoint, body))
        return handler(body)

    def _initialize(self, body: dict) -> dict:
        task = TASKS[body["task_id"]]  # KeyError: a bare 500, as AppWorld's missing task dir
        self.world = World(task)
        return _task_dict(task)

    def _evaluate(self, body: dict) -> dict:
        report = self._world(body["task_id"]).evaluate()
        if report["failures"] and not body.get("suppress_errors", False):
            raise RuntimeError("a failing test without suppress_errors")  # a bare 500
        return report

    def _close(self, body: dict) -> None:
        self._world(body["task_id"]).closed = True
        return None


def _task_dict(task: FakeTask) -> dict:
    return {"task_id": task.task_id, "instruction": task.instruction, "supervisor": dict(SUPERVISOR),
            "datetime": "2023-05-18T12:00:00"}


@contextlib.contextmanager
def fake_servers(n: int):
    """``n`` fake servers, started and stopped together."""
    servers = [FakeAppWorldServer().start() for _ in range(n)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


# -- scripted policies ---------------------------------------------------------------------

SOLUTIONS = {
    "a1b2c3d_1": "notes = apis.simple_note.search_notes(query='recipe')\napis.supervisor.complete_task(answer=len(notes))",
    "a1b2c3d_2": "apis.simple_note.create_note(title='groceries', content='milk, eggs')\napis.supervisor.complete_task()",
    "b2c3d4e_1": ("for title in ['todo', 'books']:\n    for note in apis.simple_note.search_notes(query=title):\n"
                  "        apis.simple_note.delete_note(note_id=note['note_id'])\napis.supervisor.complete_task()"),
}
WRONG = "apis.supervisor.complete_task(answer='I do not know')"


def task_of(messages: list[dict[str, str]]) -> str:
    """The fake task id whose instruction is in the chat."""
    return next(t.task_id for t in TASKS.values() if t.instruction in messages[1]["content"])


def solution_response(messages: list[dict[str, str]], choice: int = 0) -> str:
    """Choice 0 solves the task in two turns (read the app's API list, then act); choice 1
    gives up at once with a wrong answer, which passes half of every fake task's tests
    except the three-test one."""
    if choice == 1:
        return f"I will stop here.\n```python\n{WRONG}\n```"
    turn = sum(m["role"] == "assistant" for m in messages)
    if turn == 0:
        return "Let me look at the notes API first.\n```python\nprint(apis.api_docs.show_api_descriptions(app_name='simple_note'))\n```"
    return f"```python\n{SOLUTIONS[task_of(messages)]}\n```"
