import { useEffect, useState } from "react";
import { useSWRConfig } from "swr";
import type { Tabs } from "@/lib/api";

/**
 * Live updates: the owner's Server-Sent Events stream revalidates the affected SWR keys within
 * a moment of a paid call or a status change. SWR's polling stays on as the fallback; the
 * returned flag says whether the stream is connected.
 */
export function useLive(enabled: boolean): boolean {
  const { mutate } = useSWRConfig();
  const [connected, setConnected] = useState(false);
  useEffect(() => {
    if (!enabled || typeof EventSource === "undefined") return;
    const source = new EventSource("/api/session-keys/events");
    const keys = () => mutate((key) => typeof key === "string" && key.startsWith("/api/session-keys"));
    source.addEventListener("ready", () => setConnected(true));
    source.addEventListener("key", keys);
    source.addEventListener("resync", () => {
      void keys();
      void mutate("/api/tabs");
    });
    // The event carries what `GET /api/tabs` answers; each key's `tabFree` moved with it.
    source.addEventListener("tabs", (event) => {
      try {
        void mutate("/api/tabs", JSON.parse((event as MessageEvent<string>).data) as Tabs, { revalidate: false });
      } catch {
        void mutate("/api/tabs");
      }
      void keys();
    });
    source.onerror = () => setConnected(false);
    return () => {
      source.close();
      setConnected(false);
    };
  }, [enabled, mutate]);
  return connected;
}
