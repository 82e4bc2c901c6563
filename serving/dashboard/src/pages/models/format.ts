/** Small formatters the Models page shares with its tests. */

/** 90 -> "1 min 30 s", 1800 -> "30 min", 0 -> "never". */
export function formatDuration(s: number | null | undefined, zero = "0 s"): string {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s <= 0) return zero;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.round(s % 60);
  const parts = [h ? `${h} h` : "", m ? `${m} min` : "", sec && !h ? `${sec} s` : ""];
  return parts.filter(Boolean).join(" ") || "0 s";
}

export function percent(part: number, whole: number): number {
  if (!whole || whole <= 0) return 0;
  return Math.min(100, Math.max(0, Math.round((part / whole) * 100)));
}
