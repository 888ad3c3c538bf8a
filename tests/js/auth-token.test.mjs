// phoenix.js `authToken`: sent as the subprotocols
// ["phoenix", "base64url.bearer.phx." + btoa(token) without "="]; the server
// must select "phoenix" and expose the decoded token.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { joinOk, uniq, waitUntil, withTimeout } from "./lib/client.mjs";

const PREFIX = "base64url.bearer.phx.";

describe("authToken", () => {
  const h = usePlume();

  h.test('authToken "my-secret.token" reaches the join reply and "phoenix" is the negotiated subprotocol', async () => {
    const c = await h.connect({ authToken: "my-secret.token" });
    const [connect] = c.rec.events("connect");
    assert.deepEqual(connect.protocols, ["phoenix", `${PREFIX}bXktc2VjcmV0LnRva2Vu`]);
    const [upgrade] = c.rec.events("upgrade");
    assert.equal(upgrade.status, 101);
    assert.equal(upgrade.protocol, "phoenix", "Sec-WebSocket-Protocol response header");
    assert.equal(c.rec.transports[0].protocol, "phoenix");
    const response = await joinOk(c.socket.channel(`echo:${uniq()}`));
    assert.deepEqual(response, { auth_token: "my-secret.token", params: h.params(), vsn: "2.0.0" });
  });

  h.test("the token subprotocol is never echoed back and does not show up in params", async () => {
    const c = await h.connect({ authToken: "hidden" });
    assert.equal(c.rec.events("upgrade")[0].protocol, "phoenix");
    const response = await joinOk(c.socket.channel(`echo:${uniq()}`));
    assert.equal(response.auth_token, "hidden");
    assert.deepEqual(response.params, h.params());
  });

  h.test('a token whose base64 needs padding ("1234" -> MTIzNA) is decoded', async () => {
    const c = await h.connect({ authToken: "1234" });
    assert.equal(c.rec.events("connect")[0].protocols[1], `${PREFIX}MTIzNA`);
    const response = await joinOk(c.socket.channel(`echo:${uniq()}`));
    assert.equal(response.auth_token, "1234");
  });

  h.test('a token whose base64 uses the standard alphabet ("~~~~" -> fn5+fg) is decoded', async () => {
    const c = await h.connect({ authToken: "~~~~" });
    assert.equal(c.rec.events("connect")[0].protocols[1], `${PREFIX}fn5+fg`);
    const response = await joinOk(c.socket.channel(`echo:${uniq()}`));
    assert.equal(response.auth_token, "~~~~");
  });

  h.test("without authToken no subprotocol is negotiated and auth_token is null", async () => {
    const c = await h.connect();
    assert.equal(c.rec.events("connect")[0].protocols, null);
    assert.equal(c.rec.transports[0].protocol, "");
    const response = await joinOk(c.socket.channel(`echo:${uniq()}`));
    assert.equal(response.auth_token, null);
  });

  h.test("an authToken function is re-evaluated on reconnect", async () => {
    let n = 0;
    const c = h.client({ authToken: () => `token-${++n}` });
    c.socket.connect();
    const ch = c.socket.channel(`echo:${uniq()}`);
    assert.equal((await joinOk(ch)).auth_token, "token-1");
    const mark = c.rec.mark();
    c.rec.transports[0].terminate(); // unexpected drop: phoenix.js reconnects
    const reply = await c.rec.waitForText(
      "in",
      (f) => f[2] === ch.topic && f[3] === "phx_reply" && f[0] !== null && f[0] === f[1],
      { from: mark, what: "the rejoin reply on the new connection" },
    );
    assert.equal(reply.frame[4].status, "ok");
    assert.equal(reply.frame[4].response.auth_token, "token-2");
    assert.equal(c.rec.transports[1].protocol, "phoenix");
    await waitUntil(() => ch.state === "joined", { what: "rejoined channel" });
  });

  h.test('raw ws: the token entry is decoded and "phoenix" selected; offering only "phoenix" gives a null token', async () => {
    const withToken = await h.raw("vsn=2.0.0", { protocols: ["phoenix", `${PREFIX}${Buffer.from("raw-token").toString("base64").replace(/=/g, "")}`] });
    assert.equal(withToken.ws.protocol, "phoenix");
    const topic = `echo:${uniq()}`;
    withToken.send(["1", "1", topic, "phx_join", {}]);
    const reply = await withTimeout(withToken.next(), 3_000, "join reply");
    assert.deepEqual(reply.frame, ["1", "1", topic, "phx_reply", { response: { auth_token: "raw-token", params: h.params(), vsn: "2.0.0" }, status: "ok" }]);

    const plain = await h.raw("vsn=2.0.0", { protocols: ["phoenix"] });
    assert.equal(plain.ws.protocol, "phoenix");
    plain.send(["1", "1", topic, "phx_join", {}]);
    assert.equal((await plain.next()).frame[4].response.auth_token, null);
  });
});
