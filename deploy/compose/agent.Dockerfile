# The example agent (examples/agent), static, on an empty base, non-root:
# the compose file's my-agent.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/agent ./examples/agent

FROM scratch
COPY --from=build /out/agent /agent
USER 65532:65532
ENTRYPOINT ["/agent"]
