// GraphiQL against this server: HTTP for queries and mutations, graphql-transport-ws for subscriptions.
// An API key goes in the headers editor as {"Authorization": "Bearer <key>"}; it is sent on both.
(function () {
  const url = new URL("/graphql", window.location.href).href;
  const subscriptionUrl = url.replace(/^http/, "ws");
  const fetcher = GraphiQL.createFetcher({ url, subscriptionUrl });
  const defaultQuery = `# Ask the model. Try webSearch: true, or the inferStream subscription.
mutation Ask {
  infer(prompt: "What is the capital of France?", webSearch: false, params: {temperature: 0, maxNewTokens: 32}) {
    text
    finishReason
    usage { promptTokens completionTokens }
    sources { index title url }
  }
}

query Health {
  health { status model device queueDepth }
}

subscription Stream {
  inferStream(prompt: "Write a haiku about the sea.", params: {maxNewTokens: 48}) {
    type
    text
    result { finishReason timings { firstTokenSeconds tokensPerSecond } }
  }
}
`;
  // ?query=... opens GraphiQL with that document (handy for links, and for the browser test)
  const props = { fetcher, defaultQuery, defaultEditorToolsVisibility: true };
  const query = new URLSearchParams(window.location.search).get("query");
  if (query) props.query = query;
  const root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(React.createElement(GraphiQL, props));
})();
