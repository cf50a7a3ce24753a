// Parse an AsyncAPI document (JSON on stdin) with the official parser; print its diagnostics as
// JSON lines and exit 1 if any is an error (severity 0).
import { Parser } from "@asyncapi/parser";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { diagnostics } = await new Parser().parse(Buffer.concat(chunks).toString("utf8"));
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path.join("/") }));
}
process.exit(diagnostics.some((d) => d.severity === 0) ? 1 : 0);
