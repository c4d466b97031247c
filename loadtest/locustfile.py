"""Locust load test for the Weather Tweets pipeline's public endpoint.

``WeatherUser`` posts Spanish weather tweets to ``POST /input`` and counts
every answer other than ``202`` with an ``id`` as a failure.  ``BurstShape``
drives the load as bursts of users separated by idle gaps; pass
``--bursts 0`` to switch it off and use Locust's plain ``-u/-r/-t`` instead.
``--ledger-file`` writes one line per request (``Ledger``) so the tools can
audit the run tweet by tweet.
See README.md for how to run it and for every parameter.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task

logger = logging.getLogger(__name__)

# One home for the list, which a Rust test also reads (every name must resolve to itself).
COUNTRIES_FILE = Path(__file__).with_name("countries.txt")
COUNTRIES: tuple[str, ...] = tuple(
    line.strip()
    for line in COUNTRIES_FILE.read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith("#")
)

# Places a tweet can mention besides the country itself.
PLACES: tuple[str, ...] = (
    "la capital",
    "la costa",
    "el centro",
    "mi colonia",
    "la montaña",
    "el puerto",
)

# Phrase templates per weather condition; every one mentions a ``{lugar}``.
PHRASES: dict[str, tuple[str, ...]] = {
    "soleado": (
        "Hoy hace mucho sol en {lugar}",
        "Qué día tan soleado en {lugar}, ni una nube",
        "El sol está radiante esta mañana en {lugar}",
        "Calor y cielo despejado en {lugar}, a buscar sombra",
        "Día perfecto para la playa: sol pleno en {lugar}",
        "No olviden el bloqueador, el sol pega fuerte en {lugar}",
        "Cielo azul y mucho sol por {lugar}",
        "Amaneció soleado en {lugar} y promete seguir así",
        "Qué calor hace hoy en {lugar}, el sol no perdona",
        "Tarde soleada y tranquila en {lugar}",
    ),
    "nublado": (
        "El cielo está completamente nublado en {lugar}",
        "Día gris y nublado en {lugar}",
        "Las nubes no dejan ver el sol en {lugar}",
        "Amaneció nublado en {lugar}, parece que no saldrá el sol",
        "Cielo cubierto toda la tarde en {lugar}",
        "Mucha nubosidad hoy en {lugar}",
        "Otra mañana nublada en {lugar}",
        "Está tan nublado en {lugar} que parece de noche",
        "Nubes grises sobre {lugar} desde temprano",
        "Día nublado y fresco en {lugar}",
    ),
    "lluvioso": (
        "Está lloviendo sin parar en {lugar}",
        "No salgan sin paraguas, llueve en {lugar}",
        "Lluvia constante toda la mañana en {lugar}",
        "Las calles están inundadas por la lluvia en {lugar}",
        "Llovizna ligera esta tarde en {lugar}",
        "Qué aguacero está cayendo en {lugar}",
        "Día lluvioso en {lugar}, ideal para quedarse en casa",
        "Sigue la lluvia en {lugar} desde anoche",
        "Empezó a llover fuerte en {lugar}",
        "Tarde lluviosa y fría en {lugar}",
    ),
    "tormenta": (
        "Fuerte tormenta eléctrica sobre {lugar}",
        "Truenos y relámpagos toda la noche en {lugar}",
        "Se fue la luz en {lugar} por la tormenta",
        "Alerta por tormenta en {lugar}, quédense en casa",
        "Qué tormenta tan fuerte está cayendo en {lugar}",
        "Rayos por todos lados en {lugar}, da miedo",
        "La tormenta tumbó árboles en {lugar}",
        "Granizo y tormenta esta tarde en {lugar}",
        "Se acerca una tormenta, ya hay nubes negras sobre {lugar}",
        "La tormenta tropical golpea con fuerza en {lugar}",
    ),
    "nevado": (
        "Está nevando en {lugar}, todo está blanco",
        "Amaneció nevado en {lugar}",
        "Primera nevada del año en {lugar}",
        "La nieve cubre las calles en {lugar}",
        "Cae nieve sin parar sobre {lugar}",
        "Qué frío, nieva en {lugar} desde la mañana",
        "Paisaje nevado precioso en {lugar}",
        "Cerraron carreteras en {lugar} por la nieve",
        "Los niños juegan con la nieve en {lugar}",
        "Nevada intensa esta noche en {lugar}",
    ),
    "niebla": (
        "Hay mucha niebla en {lugar}, no se ve nada",
        "Niebla espesa esta mañana en {lugar}",
        "Manejen con cuidado, hay neblina en {lugar}",
        "La niebla cubre {lugar} desde temprano",
        "Amaneció con niebla en {lugar}",
        "Visibilidad casi nula por la niebla en {lugar}",
        "Una neblina densa envuelve {lugar}",
        "Retrasan vuelos por la niebla en {lugar}",
        "Qué niebla tan cerrada hay hoy en {lugar}",
        "Mañana de niebla y frío en {lugar}",
    ),
    "ventoso": (
        "Hace mucho viento en {lugar}",
        "Ráfagas de viento muy fuertes en {lugar}",
        "El viento no para en {lugar}, vuelan las hojas",
        "Día ventoso en {lugar}, sujeten los sombreros",
        "Vientos fuertes toda la tarde en {lugar}",
        "Qué ventarrón hay hoy en {lugar}",
        "El viento tumbó varios rótulos en {lugar}",
        "Sopla un viento helado en {lugar}",
        "Alerta por vientos fuertes en {lugar}",
        "Tarde ventosa y fresca en {lugar}",
    ),
}

# Share of tweets that carry ``clima``; the server derives it for the rest.
CLIMA_PROBABILITY = 0.5
# Share of tweets that spell the country key ``país`` instead of ``pais``.
ACCENTED_KEY_PROBABILITY = 0.2


def make_tweet(rng: random.Random) -> dict[str, str]:
    """Return one ``POST /input`` body drawn with ``rng``."""
    clima = rng.choice(tuple(PHRASES))
    country = rng.choice(COUNTRIES)
    text = rng.choice(PHRASES[clima]).format(lugar=rng.choice((*PLACES, country)))
    country_key = "país" if rng.random() < ACCENTED_KEY_PROBABILITY else "pais"
    tweet = {"texto": text, country_key: country}
    if rng.random() < CLIMA_PROBABILITY:
        tweet["clima"] = clima
    return tweet


def rejection_reason(status_code: int, body: str | None, error: Exception | None = None) -> str | None:
    """Return why an answer to ``POST /input`` is not an acceptance, or ``None`` if it is.

    ``status_code`` 0 means no HTTP answer came back; ``error`` then says why.
    """
    if status_code == 0:
        return f"no HTTP answer: {error!r}"
    if status_code != 202:
        return f"expected 202, got {status_code}"
    try:
        accepted = json.loads(body or "")
    except ValueError:
        return "202 with a body that is not JSON"
    if not isinstance(accepted, dict) or not accepted.get("id"):
        return '202 without an "id"'
    return None


def tweet_country(tweet: dict[str, str]) -> str:
    """Return the country ``tweet`` names, under either spelling of its key."""
    return tweet["pais"] if "pais" in tweet else tweet["país"]


def answered_id(body: str | None) -> str | None:
    """Return the tweet id an answer names (a 202's, or a 504's whose outcome is unknown), else ``None``."""
    try:
        answer = json.loads(body or "")
    except ValueError:
        return None
    tweet_id = answer.get("id") if isinstance(answer, dict) else None
    return tweet_id if isinstance(tweet_id, str) and tweet_id else None


class Ledger:
    """One JSON line per request, as the tools' audit reads it (``tools::audit::Ledger``).

    Each line is ``{"id": …, "country": …, "status": …}``: the tweet's id when the answer
    named one (``null`` otherwise), the country as sent, and the HTTP status (0 when no
    answer came).  A request answered 2xx is stored, 503 or 4xx is not, anything else
    (504, another 5xx, no answer) leaves the outcome unknown; the audit derives that from
    the status.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def record(self, country: str, status_code: int, body: str | None) -> None:
        line = {"id": answered_id(body), "country": country, "status": status_code}
        self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._stream.close()


@dataclass(frozen=True)
class BurstPlan:
    """Bursts of ``users`` users, each ``burst_seconds`` long, ``gap_seconds`` apart.

    ``bursts == 0`` means no plan: the load follows Locust's ``-u/-r/-t``.
    """

    users: int = 50
    spawn_rate: float = 50.0
    burst_seconds: float = 20.0
    gap_seconds: float = 10.0
    bursts: int = 2

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"--burst-users must be at least 1, got {self.users}")
        if self.spawn_rate <= 0:
            raise ValueError(f"--burst-spawn-rate must be positive, got {self.spawn_rate}")
        if self.burst_seconds <= 0:
            raise ValueError(f"--burst-seconds must be positive, got {self.burst_seconds}")
        if self.gap_seconds < 0:
            raise ValueError(f"--gap-seconds must not be negative, got {self.gap_seconds}")
        if self.bursts < 0:
            raise ValueError(f"--bursts must not be negative, got {self.bursts}")

    @property
    def total_seconds(self) -> float:
        """Length of the whole plan: every burst plus the gaps between them."""
        return self.bursts * self.burst_seconds + max(self.bursts - 1, 0) * self.gap_seconds

    def schedule(self, elapsed: float) -> tuple[int, float] | None:
        """Return ``(users, spawn_rate)`` at ``elapsed`` seconds, or ``None`` once it is over.

        During a gap the user count is 0; the spawn rate then paces the stop.
        """
        if elapsed >= self.total_seconds:
            return None
        offset = elapsed % (self.burst_seconds + self.gap_seconds)
        users = self.users if offset < self.burst_seconds else 0
        return users, self.spawn_rate


class BurstShape(LoadTestShape):
    """Locust shape following a ``BurstPlan`` set from the command line."""

    # Spares -u/-r/-t Locust's "will be ignored" warning, which would be wrong
    # under --bursts 0; configure_shape warns instead when the shape is kept.
    use_common_options = True

    def __init__(self, plan: BurstPlan | None = None) -> None:
        super().__init__()
        self.plan = plan or BurstPlan()

    def tick(self) -> tuple[int, float] | None:
        return self.plan.schedule(self.get_run_time())


@events.init_command_line_parser.add_listener
def add_arguments(parser, **_kwargs) -> None:
    """Add this file's options, each also settable by its environment variable."""
    defaults = BurstPlan()
    group = parser.add_argument_group("Weather Tweets load test")
    group.add_argument(
        "--burst-users", type=int, default=defaults.users, env_var="LOCUST_BURST_USERS",
        help="Users during each burst.",
    )
    group.add_argument(
        "--burst-spawn-rate", type=float, default=defaults.spawn_rate, env_var="LOCUST_BURST_SPAWN_RATE",
        help="Users started (and stopped) per second at each burst edge.",
    )
    group.add_argument(
        "--burst-seconds", type=float, default=defaults.burst_seconds, env_var="LOCUST_BURST_SECONDS",
        help="Length of each burst in seconds.",
    )
    group.add_argument(
        "--gap-seconds", type=float, default=defaults.gap_seconds, env_var="LOCUST_GAP_SECONDS",
        help="Idle seconds (0 users) between bursts.",
    )
    group.add_argument(
        "--bursts", type=int, default=defaults.bursts, env_var="LOCUST_BURSTS",
        help="Number of bursts; 0 turns the burst shape off so -u/-r/-t apply.",
    )
    group.add_argument(
        "--user-rps", type=float, default=0.0, env_var="LOCUST_USER_RPS",
        help="Requests per second per user (constant throughput); 0 means no wait.",
    )
    group.add_argument(
        "--ledger-file", default="", env_var="LOCUST_LEDGER_FILE",
        help="Write one JSON line per request (id, country, status) to this file, for the tools' audit.",
    )


@events.init.add_listener
def configure_shape(environment, **_kwargs) -> None:
    """Apply the parsed options to ``BurstShape``, or drop it under ``--bursts 0``."""
    options = environment.parsed_options
    if options is None:
        return
    if options.user_rps < 0:
        raise ValueError(f"--user-rps must not be negative, got {options.user_rps}")
    plan = BurstPlan(
        users=options.burst_users,
        spawn_rate=options.burst_spawn_rate,
        burst_seconds=options.burst_seconds,
        gap_seconds=options.gap_seconds,
        bursts=options.bursts,
    )
    if plan.bursts == 0:
        environment.shape_class = None
        return
    if isinstance(environment.shape_class, BurstShape):
        environment.shape_class.plan = plan
        if options.num_users or options.spawn_rate or options.run_time:
            logger.warning("The burst shape drives the load: -u/-r/-t are ignored (use --bursts 0 for them).")


@events.init.add_listener
def open_ledger(environment, **_kwargs) -> None:
    """Open ``--ledger-file`` (line-buffered) as ``environment.weather_ledger``, or set it to ``None``."""
    options = environment.parsed_options
    path = getattr(options, "ledger_file", "") if options is not None else ""
    environment.weather_ledger = Ledger(Path(path).open("w", encoding="utf-8", buffering=1)) if path else None


@events.quitting.add_listener
def close_ledger(environment, **_kwargs) -> None:
    """Close the ledger, if any, once Locust stops."""
    ledger = getattr(environment, "weather_ledger", None)
    if ledger is not None:
        ledger.close()
        environment.weather_ledger = None


class WeatherUser(FastHttpUser):
    """Posts one generated tweet per task to ``POST /input``, each answer kept in the ledger if any."""

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.rng = random.Random()
        options = environment.parsed_options
        user_rps = options.user_rps if options is not None else 0.0
        self._paced_wait = constant_throughput(user_rps) if user_rps > 0 else None
        self.ledger: Ledger | None = getattr(environment, "weather_ledger", None)

    def wait_time(self) -> float:
        return self._paced_wait(self) if self._paced_wait else 0.0

    @task
    def post_tweet(self) -> None:
        tweet = make_tweet(self.rng)
        with self.client.post("/input", json=tweet, catch_response=True) as response:
            reason = rejection_reason(response.status_code, response.text, getattr(response, "error", None))
            if reason is None:
                response.success()
            else:
                response.failure(reason)
            if self.ledger is not None:
                self.ledger.record(tweet_country(tweet), response.status_code, response.text)
