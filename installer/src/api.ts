// The join server's management API, as the page uses it. URLs are relative to the page
// (/install/ -> /api/v1/), so the app works over HTTP and HTTPS, behind any host name.

import type { CheckResult, ClaimOutcome } from "./words";

const API = new URL("../api/v1/", document.baseURI);

/** An answer of the API: its status, its JSON body (or null), its Retry-After. */
export interface Answer<T> {
  status: number;
  body: T | null;
  retryAfter: number | null;
}

/** The device as `GET /api/v1/devices/{dev_eui}` shows it (the fields the page reads). */
export interface DeviceView {
  dev_eui: string;
  claimed?: boolean;
  home_net_id?: string;
  locked: boolean;
  last_join_at?: string | null;
  last_join_net_id?: string | null;
}

/** The error body of the API. */
export interface ApiError {
  error: string;
  message: string;
}

async function call<T>(key: string, method: string, path: string, body?: unknown): Promise<Answer<T>> {
  const headers: Record<string, string> = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(new URL(path, API), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  let parsed: T | null = null;
  try {
    parsed = (await r.json()) as T;
  } catch {
    parsed = null;
  }
  const ra = Number(r.headers.get("Retry-After"));
  return { status: r.status, body: parsed, retryAfter: Number.isFinite(ra) && ra > 0 ? ra : null };
}

/**
 * Whether the key is accepted: `{ refused }` with the server's reason if not, else the home
 * NetID to propose: the tenant's own (`GET /api/v1/me`, set by an administrator) as
 * `tenantNetId`, else that of one of the key's devices as `homeNetId`, if it has any.
 */
export async function checkKey(
  key: string,
): Promise<{ refused: string } | { tenantNetId: string | null; homeNetId: string | null }> {
  const me = await call<{ message?: string; home_net_id?: string | null }>(key, "GET", "me");
  if (me.status !== 200) return { refused: me.body?.message ?? `the join server answered ${me.status}` };
  const tenantNetId = me.body?.home_net_id ?? null;
  if (tenantNetId) return { tenantNetId, homeNetId: null };
  const a = await call<{ message?: string; devices?: DeviceView[] }>(key, "GET", "devices?limit=1");
  if (a.status !== 200) return { refused: a.body?.message ?? `the join server answered ${a.status}` };
  return { tenantNetId: null, homeNetId: a.body?.devices?.[0]?.home_net_id ?? null };
}

/** Checks a code by the rules of `qr parse` (the server runs the qr crate's parser). */
export async function parseCode(key: string, text: string): Promise<Answer<CheckResult | ApiError>> {
  return call<CheckResult | ApiError>(key, "POST", "qr/parse", { text });
}

/** One device, or null when the key may not see it. */
export async function device(key: string, devEui: string): Promise<Answer<DeviceView | ApiError>> {
  return call<DeviceView | ApiError>(key, "GET", `devices/${encodeURIComponent(devEui)}`);
}

/**
 * Claims the code's device for `netId` and names the outcome. A refusal as "already claimed" is
 * told apart by whether the key can see the device (only its owner can).
 */
export async function claim(
  key: string,
  code: string,
  devEui: string,
  netId: string,
): Promise<{ outcome: ClaimOutcome; retryAfter?: number; message?: string; device?: DeviceView }> {
  const a = await call<DeviceView | ApiError>(key, "POST", "claims", { qr_code: code, home_net_id: netId });
  const err = a.status === 200 ? null : (a.body as ApiError | null);
  switch (a.status) {
    case 200:
      return { outcome: "claimed", device: a.body as DeviceView };
    case 401:
      return { outcome: "signed_out", message: err?.message };
    case 403:
      return { outcome: err?.error === "wrong_token" ? "wrong_token" : "not_an_owner" };
    case 404:
      return { outcome: "unknown_device" };
    case 409: {
      const d = await device(key, devEui);
      return d.status === 200
        ? { outcome: "already_yours", device: d.body as DeviceView }
        : { outcome: "claimed_by_someone_else" };
    }
    case 423:
      return { outcome: "locked" };
    case 429:
      return { outcome: "too_many_attempts", retryAfter: a.retryAfter ?? undefined };
    default:
      return { outcome: "failed", message: err?.message ?? `the join server answered ${a.status}` };
  }
}
