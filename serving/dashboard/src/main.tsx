import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { QueryClientProvider } from "@tanstack/react-query";
import { RouterProvider } from "@tanstack/react-router";
import { makeQueryClient } from "./queryClient";
import { makeRouter } from "./router";
import { applyTheme, useTheme } from "./store/theme";
import "./index.css";

applyTheme(useTheme.getState().theme);
const queryClient = makeQueryClient();
const router = makeRouter(queryClient);

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <RouterProvider router={router} />
    </QueryClientProvider>
  </StrictMode>,
);
