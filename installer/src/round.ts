// A round of many meters: every checked code, its claim outcome and its join state, kept in the
// browser's localStorage (never the API key, never the owner token) and exportable as CSV.

/** One meter of the round. */
export interface Meter {
  dev_eui: string;
  join_eui: string;
  serial_number: string | null;
  /** "checked", "claimed", "already yours", "wrong token", ... (words, see words.ts). */
  state: string;
  home_net_id: string | null;
  claimed_at: string | null;
  last_join_at: string | null;
  last_join_net_id: string | null;
}

const STORAGE_KEY = "installer.round.v1";

/** The round as stored, or an empty one. */
export function load(storage: Storage): Meter[] {
  try {
    const v = JSON.parse(storage.getItem(STORAGE_KEY) ?? "[]");
    return Array.isArray(v) ? (v as Meter[]) : [];
  } catch {
    return [];
  }
}

/** Stores the round. */
export function save(storage: Storage, round: Meter[]): void {
  storage.setItem(STORAGE_KEY, JSON.stringify(round));
}

/** Updates a meter in place (by DevEUI), or adds it first (the most recently scanned on top). */
export function upsert(round: Meter[], m: Partial<Meter> & { dev_eui: string }): Meter[] {
  const old = round.find((x) => x.dev_eui === m.dev_eui);
  const base: Meter = old ?? {
    dev_eui: m.dev_eui,
    join_eui: "",
    serial_number: null,
    state: "checked",
    home_net_id: null,
    claimed_at: null,
    last_join_at: null,
    last_join_net_id: null,
  };
  const merged = { ...base, ...m };
  return old ? round.map((x) => (x === old ? merged : x)) : [merged, ...round];
}

const COLUMNS: (keyof Meter)[] = [
  "dev_eui",
  "join_eui",
  "serial_number",
  "state",
  "home_net_id",
  "claimed_at",
  "last_join_at",
  "last_join_net_id",
];

function cell(v: string | null): string {
  const s = v ?? "";
  // RFC 4180 quoting; a leading = + - @ is prefixed so a spreadsheet does not run it as a formula.
  const safe = /^[=+\-@]/.test(s) ? `'${s}` : s;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

/** The round as CSV (RFC 4180, CRLF line ends, a header row). */
export function toCsv(round: Meter[]): string {
  const lines = [COLUMNS.join(",")];
  for (const m of round) lines.push(COLUMNS.map((c) => cell(m[c])).join(","));
  return lines.join("\r\n") + "\r\n";
}
