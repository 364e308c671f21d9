# One image for every Python service of orchard (ingest, control, api, the simulator,
# the broker-init job); docker-compose.yml picks the module with `python -m <service>`.
# Slim, non-root, dependencies pinned by requirements.lock.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# mosquitto_passwd hashes broker passwords (broker-init, API device provisioning); it
# ships in Debian's mosquitto package. The broker itself runs in its own container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Runtime dependencies only (no test or lint tools), each at the version the lock file
# pins; this layer is rebuilt only when the lock or pyproject.toml changes.
COPY requirements.lock pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/runtime.txt \
    && pip install --constraint requirements.lock --requirement /tmp/runtime.txt \
    && rm /tmp/runtime.txt

COPY README.md ./
COPY orchard ./orchard
COPY firmware_sim ./firmware_sim
COPY ingest ./ingest
COPY control ./control
COPY api ./api
COPY dashboards ./dashboards
COPY config ./config
RUN pip install --no-deps -e .

# Service user. /mosquitto/auth is where the broker's password file lives (named volume
# broker-auth): owned by uid 1883, Mosquitto's user in the eclipse-mosquitto image, so
# broker-init and the API (which run as 1883 for this) can write it and the broker read it.
RUN groupadd --system --gid 10001 orchard \
    && useradd --system --uid 10001 --gid orchard --home-dir /app --shell /usr/sbin/nologin orchard \
    && mkdir -p /app/var /mosquitto/auth \
    && chown orchard:orchard /app/var \
    && chown 1883:1883 /mosquitto/auth
USER orchard

# Overridden per service in docker-compose.yml.
CMD ["python", "-m", "orchard", "--help"]
