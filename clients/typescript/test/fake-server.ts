// A scripted HTTP server on 127.0.0.1 for the transport tests: each request is answered by the next step of a
// script (a status with headers and a body, a dropped connection, or no answer at all), and recorded.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type Step =
  | { status: number; headers?: Record<string, string>; body?: unknown }
  | "drop" // destroy the socket before answering: the client sees a network error
  | "hang"; // never answer (until the server is closed)

export interface Recorded {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}

export interface FakeServer {
  url: string;
  requests: Recorded[];
  close(): Promise<void>;
}

/** Starts a server that plays `script` in order; once it is used up, the last step repeats. */
export async function fakeServer(script: Step[]): Promise<FakeServer> {
  const requests: Recorded[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      requests.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers,
                      body: Buffer.concat(chunks).toString("utf8") });
      play(script[Math.min(requests.length, script.length) - 1]!, req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

function play(step: Step, req: IncomingMessage, res: ServerResponse): void {
  if (step === "drop") {
    req.socket.destroy();
    return;
  }
  if (step === "hang") return;
  const isText = typeof step.body === "string";
  const payload = step.body === undefined ? "" : isText ? (step.body as string) : JSON.stringify(step.body);
  const type = isText ? "text/html" : step.status >= 400 ? "application/problem+json" : "application/json";
  res.writeHead(step.status, { "Content-Type": type, ...step.headers });
  res.end(payload);
}

/** The problem details body the service sends for `status`. */
export function problem(status: number, title: string, detail = title): Record<string, unknown> {
  return { type: `https://gradient-service.example/problems/${status}`, title, status, detail, errors: [] };
}
