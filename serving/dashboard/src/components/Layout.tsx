/** The app shell: a side nav (a menu button on phone widths), theme toggle, who is signed in,
 * the live socket's state, and the page. Also the auth gate: the sign-in form when needed. */
import { useState, type ReactNode } from "react";
import { Link, Outlet } from "@tanstack/react-router";
import { useQueryClient } from "@tanstack/react-query";
import { ApiError } from "../api/client";
import { useInfo, usePermissions } from "../api/hooks";
import { useLiveSocket } from "../live/socket";
import { useAuth } from "../store/auth";
import { useLive } from "../store/live";
import { useTheme } from "../store/theme";
import { ErrorPanel } from "./ErrorPanel";
import { SignIn } from "./SignIn";
import { Button, Spinner, cx } from "./ui";

export const NAV: { to: string; label: string; adminOnly?: boolean }[] = [
  { to: "/", label: "Chat" },
  { to: "/knowledge", label: "Knowledge" },
  { to: "/models", label: "Models" },
  { to: "/metrics", label: "Metrics" },
  { to: "/experiments", label: "Experiments" },
  { to: "/hardware", label: "Hardware" },
  { to: "/keys", label: "Keys", adminOnly: true },
];

function LiveDot() {
  const status = useLive((s) => s.status);
  const color = status === "open" ? "bg-emerald-500" : status === "connecting" ? "bg-amber-500" : "bg-zinc-500";
  return (
    <span className="inline-flex items-center gap-1.5 text-xs text-zinc-600 dark:text-zinc-400" title="Live events (WebSocket)">
      <span className={cx("h-2 w-2 rounded-full", color)} aria-hidden />
      live: {status}
    </span>
  );
}

function Nav({ onNavigate }: { onNavigate?: () => void }) {
  const { isAdmin } = usePermissions();
  return (
    <ul className="space-y-0.5">
      {NAV.filter((n) => !n.adminOnly || isAdmin).map((n) => (
        <li key={n.to}>
          <Link
            to={n.to}
            onClick={onNavigate}
            activeOptions={{ exact: n.to === "/" }}
            className="block rounded-md px-3 py-1.5 text-sm text-zinc-700 hover:bg-zinc-200 dark:text-zinc-300 dark:hover:bg-zinc-800"
            activeProps={{ className: "bg-zinc-200 font-semibold text-zinc-950 dark:bg-zinc-800 dark:text-white", "aria-current": "page" }}
          >
            {n.label}
          </Link>
        </li>
      ))}
    </ul>
  );
}

function Shell({ children }: { children: ReactNode }) {
  const [menuOpen, setMenuOpen] = useState(false);
  const { theme, toggle } = useTheme();
  const { data: info } = useInfo();
  const { apiKey, signOut } = useAuth();
  const queryClient = useQueryClient();
  return (
    <div className="flex min-h-full flex-col md:flex-row">
      <a href="#main" className="sr-only focus:not-sr-only focus:absolute focus:p-2">
        Skip to content
      </a>
      <aside className="border-b border-zinc-200 bg-zinc-100 md:sticky md:top-0 md:h-screen md:w-52 md:shrink-0 md:border-r md:border-b-0 dark:border-zinc-800 dark:bg-zinc-900">
        <div className="flex items-center justify-between px-4 py-3">
          <Link to="/" className="text-base font-bold tracking-tight">
            Impetus
          </Link>
          <Button
            variant="ghost"
            className="md:hidden"
            aria-expanded={menuOpen}
            aria-controls="main-nav"
            onClick={() => setMenuOpen((o) => !o)}
          >
            Menu
          </Button>
        </div>
        <nav id="main-nav" aria-label="Main" className={cx("px-2 pb-3 md:block", !menuOpen && "hidden")}>
          <Nav onNavigate={() => setMenuOpen(false)} />
          <div className="mt-4 space-y-2 border-t border-zinc-200 px-3 pt-3 text-xs dark:border-zinc-800">
            <LiveDot />
            {info?.role && (
              <p className="text-zinc-600 dark:text-zinc-400">
                {info.key_name ?? "key"} ({info.role})
              </p>
            )}
            <div className="flex flex-wrap gap-2">
              <Button variant="ghost" onClick={toggle} aria-label={`Switch to ${theme === "dark" ? "light" : "dark"} theme`}>
                {theme === "dark" ? "Light" : "Dark"} theme
              </Button>
              {apiKey && (
                <Button
                  variant="ghost"
                  onClick={() => {
                    signOut();
                    queryClient.clear();
                  }}
                >
                  Sign out
                </Button>
              )}
            </div>
            {info?.version && <p className="text-zinc-500">v{info.version}</p>}
          </div>
        </nav>
      </aside>
      <main id="main" className="min-w-0 flex-1 p-4 md:p-6">
        {children}
      </main>
    </div>
  );
}

/** Root component: decides between the sign-in form and the app. */
export function Layout() {
  const info = useInfo();
  const { apiKey, rejected } = useAuth();
  const unauthorised = info.error instanceof ApiError && info.error.status === 401;
  const needsKey = unauthorised || rejected || (!!info.data?.auth_enabled && !apiKey);
  useLiveSocket(!!info.data && !needsKey);

  if (info.isLoading) {
    return (
      <div className="p-6">
        <Spinner label="Connecting to the server" />
      </div>
    );
  }
  if (needsKey) return <SignIn />;
  if (info.error) {
    return (
      <div className="p-6">
        <ErrorPanel error={info.error} onRetry={() => void info.refetch()} />
      </div>
    );
  }
  return (
    <Shell>
      <Outlet />
    </Shell>
  );
}
