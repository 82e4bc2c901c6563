/** Code-based TanStack Router routes. Every page is a lazy, code-split chunk: a route's component
 * is `lazyRouteComponent(() => import("./pages/<name>/index"))`, i.e. the page module's default
 * export. A new page = a folder under pages/ with a default-exported component, plus one entry
 * in PAGES below. */
import { createRootRouteWithContext, createRoute, createRouter, lazyRouteComponent } from "@tanstack/react-router";
import type { QueryClient } from "@tanstack/react-query";
import { ErrorPanel } from "./components/ErrorPanel";
import { Layout } from "./components/Layout";
import { EmptyState, Spinner } from "./components/ui";

export interface RouterContext {
  queryClient: QueryClient;
}

const rootRoute = createRootRouteWithContext<RouterContext>()({
  component: Layout,
  notFoundComponent: () => (
    <EmptyState title="No such page">Pick a page in the navigation.</EmptyState>
  ),
});

const PAGES = {
  "/": () => import("./pages/chat/index"),
  "/knowledge": () => import("./pages/knowledge/index"),
  "/models": () => import("./pages/models/index"),
  "/metrics": () => import("./pages/metrics/index"),
  "/experiments": () => import("./pages/experiments/index"),
  "/hardware": () => import("./pages/hardware/index"),
  "/keys": () => import("./pages/keys/index"),
} as const;

const pageRoutes = Object.entries(PAGES).map(([path, importer]) =>
  createRoute({ getParentRoute: () => rootRoute, path, component: lazyRouteComponent(importer) }),
);

export const routeTree = rootRoute.addChildren(pageRoutes);

export function makeRouter(queryClient: QueryClient, history?: Parameters<typeof createRouter>[0]["history"]) {
  return createRouter({
    routeTree,
    context: { queryClient },
    history,
    defaultPendingComponent: () => (
      <div className="p-2">
        <Spinner />
      </div>
    ),
    defaultErrorComponent: ({ error, reset }) => <ErrorPanel error={error} onRetry={reset} />,
  });
}

declare module "@tanstack/react-router" {
  interface Register {
    router: ReturnType<typeof makeRouter>;
  }
}
