# The framecdn origin (and the ingest/maintenance CLI): `docker build -t framecdn .`
# The render extra makes thumbnails and rendered frames (numpy, Pillow, pydicom's plug-ins).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY framecdn ./framecdn
RUN pip install .[render] && useradd --system --uid 10001 --no-create-home framecdn

USER framecdn
ENV FRAMECDN_PORT=8080
EXPOSE 8080
CMD ["framecdn", "serve", "--host", "0.0.0.0"]
